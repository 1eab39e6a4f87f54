#!/bin/sh
# Writes each argument on its own NUL-terminated record, and the environment, for inspection.
for a in "$@"; do printf '%s\0' "$a"; done > "$MAILROOM_ROOT/$MAILROOM_TASK.args"
env | grep '^MAILROOM_' | sort > "$MAILROOM_ROOT/$MAILROOM_TASK.env"
echo done
