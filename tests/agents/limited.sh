#!/bin/sh
# Prints a usage-limit message ($LIMIT_MSG) the way agent CLIs do, and exits
# with $LIMIT_EXIT (claude sometimes exits 0 when limited).
[ -n "${RUNLOG:-}" ] && echo "$MAILROOM_TASK $MAILROOM_ATTEMPT limited" >> "$RUNLOG"
printf '%s\n' "$LIMIT_MSG"
exit "${LIMIT_EXIT:-1}"
