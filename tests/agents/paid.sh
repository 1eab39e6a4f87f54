#!/bin/sh
# Reports a cost like a CLI with JSON output: {"result", "cost", "in", "out"}.
# $COST (default 0.6) is the cost of each run; with $CHAIN set, each run also
# writes one follow-up task into its outbox (a chain of follow-ups); with
# $FAIL_FIRST set, attempt 1 fails (exit 3) after reporting its cost.
if [ -n "${CHAIN:-}" ]; then
  printf 'description: next after %s\n' "$MAILROOM_TASK" > "$MAILROOM_OUTBOX/n-$MAILROOM_TASK.yaml"
fi
printf '{"result":"done %s","cost":%s,"in":1000,"out":10}\n' "$MAILROOM_TASK" "${COST:-0.6}"
if [ -n "${FAIL_FIRST:-}" ] && [ "$MAILROOM_ATTEMPT" = 1 ]; then exit 3; fi
