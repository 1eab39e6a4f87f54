#!/bin/sh
# Fails with exit code 3 unless the file named by $SUCCEED_IF exists.
[ -n "${RUNLOG:-}" ] && echo "$MAILROOM_TASK $MAILROOM_ATTEMPT $$" >> "$RUNLOG"
if [ -n "${SUCCEED_IF:-}" ] && [ -e "$SUCCEED_IF" ]; then echo fine; exit 0; fi
echo "something broke on attempt $MAILROOM_ATTEMPT" >&2
exit 3
