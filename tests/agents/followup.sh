#!/bin/sh
# Writes the follow-up tasks named in $FOLLOWUPS into $MAILROOM_OUTBOX (with
# CHAIN=1, one named "<this task>-n"), prints a summary block, and exits $EXIT.
[ -n "${RUNLOG:-}" ] && echo "$MAILROOM_TASK" >> "$RUNLOG"
names=${FOLLOWUPS:-}
[ "${CHAIN:-0}" = 1 ] && names="$MAILROOM_TASK-n"
for f in $names; do
  printf 'description: follow-up %s of %s\n' "$f" "$MAILROOM_TASK" > "$MAILROOM_OUTBOX/$f.yaml"
done
printf 'worked on %s\n[SUMMARY]\n%s finished its part\n[/SUMMARY]\n' "$MAILROOM_TASK" "$MAILROOM_TASK"
exit "${EXIT:-0}"
