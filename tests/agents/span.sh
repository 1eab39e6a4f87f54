#!/bin/sh
# Logs "S task attempt ns" when a run starts and "E task attempt ns" when it
# ends (also when stopped by SIGTERM), sleeping $SPAN_MS in between. Used to
# prove that two runs of one task never overlap.
# A SIGTERM can kill `date` inside $(...): ask again until there is an answer.
now() { t=""; while [ -z "$t" ]; do t=$(date +%s%N); done; echo "$t"; }
log() { t=$(now); echo "$1 $MAILROOM_TASK $MAILROOM_ATTEMPT $t" >> "$RUNLOG"; }
# The end line is written exactly once: whoever writes it first ignores
# TERM and INT from then on (a trap still armed during the last write would
# log a second end; a default action would kill the write and log none).
# Ignored signals stay ignored in `date` and `echo` below.
finish() { trap '' TERM INT; log E; }
trap 'finish; exit 143' TERM INT
log S
ms=${SPAN_MS:-50}
# With SPAN_MS_MAX, each run lasts a random time between the two.
if [ -n "${SPAN_MS_MAX:-}" ]; then
  ms=$(awk -v lo="$ms" -v hi="$SPAN_MS_MAX" -v seed="$$" 'BEGIN{srand(seed); print int(lo + rand() * (hi - lo + 1))}')
fi
sleep "$(awk "BEGIN{print $ms/1000}")"
finish
