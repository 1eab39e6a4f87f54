#!/bin/sh
# A fake $EDITOR for `mailroom new`: appends $TASK_BODY to the file it is
# given (below the template's front matter), or changes nothing when unset.
[ -n "${TASK_BODY:-}" ] && printf '%s\n' "$TASK_BODY" >> "$1"
[ -n "${TASK_FRONT:-}" ] && sed -i "2i $TASK_FRONT" "$1"
exit 0
