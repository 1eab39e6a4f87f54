#!/bin/sh
# Logs "S task attempt ns" when a run starts and "E task attempt ns" when it
# ends (also when stopped by SIGTERM), sleeping $SPAN_MS in between. Used to
# prove that two runs of one task never overlap.
# A SIGTERM can kill `date` inside $(...): ask again until there is an answer.
now() { t=""; while [ -z "$t" ]; do t=$(date +%s%N); done; echo "$t"; }
log() { t=$(now); echo "$1 $MAILROOM_TASK $MAILROOM_ATTEMPT $t" >> "$RUNLOG"; }
trap 'log E; exit 143' TERM INT
log S
ms=${SPAN_MS:-50}
sleep "$(awk "BEGIN{print $ms/1000}")"
log E
