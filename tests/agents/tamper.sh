#!/bin/sh
# Misbehaves with its own task, as its prompt (the last argument) says:
#   move-back  moves its task file back into tasks/pending/
#   delete     deletes its task file
#   shadow     writes tasks/completed/<task>.yaml itself
#   newer      submits a newer file of its own name into tasks/pending/ and fails
#   wait       waits until the file named by $RELEASE exists, then succeeds
# Logs one line per run (task, attempt, pid) to $RUNLOG when it is set.
[ -n "${RUNLOG:-}" ] && echo "$MAILROOM_TASK $MAILROOM_ATTEMPT $$" >> "$RUNLOG"
for last; do :; done
case "$last" in
  move-back) mv "$MAILROOM_TASK_FILE" "$MAILROOM_ROOT/tasks/pending/" ;;
  delete) rm -f "$MAILROOM_TASK_FILE" ;;
  shadow) printf 'description: not the real one\n' > "$MAILROOM_ROOT/tasks/completed/$MAILROOM_TASK.yaml" ;;
  newer)
    if [ "$MAILROOM_ATTEMPT" = 1 ]; then
      printf 'description: a newer file\n' > "$MAILROOM_ROOT/tasks/tmp/newer"
      mv "$MAILROOM_ROOT/tasks/tmp/newer" "$MAILROOM_ROOT/tasks/pending/$MAILROOM_TASK.yaml"
    fi
    echo "failing on purpose" >&2
    exit 3 ;;
  wait) while [ ! -e "$RELEASE" ]; do sleep 0.05; done ;;
esac
echo "ran $MAILROOM_TASK"
