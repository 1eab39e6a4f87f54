#!/bin/sh
# Records its task and the time of its start (ns) in $STAMPS, then succeeds.
echo "$MAILROOM_TASK $(date +%s%N)" >> "$STAMPS"
