#!/bin/sh
# Succeeds; logs one line per run (task, attempt, pid) and echoes its prompt.
[ -n "${RUNLOG:-}" ] && echo "$MAILROOM_TASK $MAILROOM_ATTEMPT $$" >> "$RUNLOG"
printf 'ran %s\n' "$MAILROOM_TASK"
printf '%s' "$1" > "$MAILROOM_OUTPUT"
