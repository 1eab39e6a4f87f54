#!/bin/sh
# Misbehaves with its own task, as its prompt (the last argument) says:
#   move-back  moves its task file back into tasks/pending/
#   delete     deletes its task file
#   shadow     writes tasks/completed/<task>.yaml itself
#   shadow-fail  writes tasks/completed/<task>.yaml itself, then fails
#   shadow-failed  writes tasks/failed/<task>.yaml itself, then succeeds
#   newer      submits a newer file of its own name into tasks/pending/ and fails
#   wait       waits until the file named by $RELEASE exists, then succeeds
#   kill-keeper  kills its run keeper (SIGKILL), then goes on for 30 s and
#              logs "late" if it is not stopped
#   term-keeper  sends its run keeper SIGTERM (a stop mailroom did not ask
#              for), then waits to be stopped
#   stop-keeper  stops its run keeper (SIGSTOP), then waits to be stopped
#   hup-keeper sends its run keeper SIGHUP, then succeeds
#   rm-run-dir removes its own run directory and exits 0
#   as-dir     replaces its task file with a directory and exits 0
#   as-link    replaces its task file with a symbolic link to /etc/hostname
#   resave     saves its task file again unchanged, as an editor does (a
#              new file through a temp file and a rename)
#   rewrite    writes another task into its task file's place and exits 0
# Logs one line per run (task, attempt, pid) to $RUNLOG when it is set.
[ -n "${RUNLOG:-}" ] && echo "$MAILROOM_TASK $MAILROOM_ATTEMPT $$" >> "$RUNLOG"
for last; do :; done
case "$last" in
  move-back) mv "$MAILROOM_TASK_FILE" "$MAILROOM_ROOT/tasks/pending/" ;;
  delete) rm -f "$MAILROOM_TASK_FILE" ;;
  shadow) printf 'description: not the real one\n' > "$MAILROOM_ROOT/tasks/completed/$MAILROOM_TASK.yaml" ;;
  shadow-fail)
    printf 'description: not the real one\n' > "$MAILROOM_ROOT/tasks/completed/$MAILROOM_TASK.yaml"
    exit 1 ;;
  shadow-failed) printf 'description: not the real one\n' > "$MAILROOM_ROOT/tasks/failed/$MAILROOM_TASK.yaml" ;;
  newer)
    if [ "$MAILROOM_ATTEMPT" = 1 ]; then
      printf 'description: a newer file\n' > "$MAILROOM_ROOT/tasks/tmp/newer"
      mv "$MAILROOM_ROOT/tasks/tmp/newer" "$MAILROOM_ROOT/tasks/pending/$MAILROOM_TASK.yaml"
    fi
    echo "failing on purpose" >&2
    exit 3 ;;
  wait) while [ ! -e "$RELEASE" ]; do sleep 0.05; done ;;
  kill-keeper)
    kill -KILL "$PPID"
    sleep 30
    [ -n "${RUNLOG:-}" ] && echo "late $MAILROOM_TASK" >> "$RUNLOG"
    ;;
  term-keeper) kill -TERM "$PPID"; sleep 30 ;;
  hup-keeper) kill -HUP "$PPID"; sleep 0.5 ;;
  stop-keeper) kill -STOP "$PPID"; sleep 60 ;;
  rm-run-dir) rm -rf "$MAILROOM_RUN_DIR" ;;
  as-dir) rm -f "$MAILROOM_TASK_FILE"; mkdir "$MAILROOM_TASK_FILE" ;;
  as-link) rm -f "$MAILROOM_TASK_FILE"; ln -s /etc/hostname "$MAILROOM_TASK_FILE" ;;
  resave)
    cp "$MAILROOM_TASK_FILE" "$MAILROOM_TASK_FILE.tmp~"
    mv "$MAILROOM_TASK_FILE.tmp~" "$MAILROOM_TASK_FILE" ;;
  rewrite)
    rm -f "$MAILROOM_TASK_FILE"
    printf 'description: the agent wrote this\n' > "$MAILROOM_TASK_FILE" ;;
esac
echo "ran $MAILROOM_TASK"
