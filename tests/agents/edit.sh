#!/bin/sh
# Edits a file in its working directory; with COMMIT=1 also commits it; with
# REPORT=1 writes $MAILROOM_RESULT instead of leaving git to tell.
echo "$MAILROOM_TASK" > "edited-by-$MAILROOM_TASK.txt"
if [ "${COMMIT:-0}" = 1 ]; then
  git add "edited-by-$MAILROOM_TASK.txt"
  git -c user.email=agent@example.invalid -c user.name=agent commit -q -m "work of $MAILROOM_TASK"
fi
if [ "${REPORT:-0}" = 1 ]; then
  printf 'files_modified: [edited-by-%s.txt, notes/plan.md]\nsummary: done\nstatus: ok\n' "$MAILROOM_TASK" > "$MAILROOM_RESULT"
fi
pwd > "$MAILROOM_ROOT/$MAILROOM_TASK.cwd"
