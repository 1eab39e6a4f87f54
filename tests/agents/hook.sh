#!/bin/sh
# A hook: appends one line to the file named by $1: its other arguments, then
# the MAILROOM_* values it got in its environment, then whether stdin is empty.
# HOOK_MODE=fail exits 1; HOOK_MODE=hang records its pid in $1.pid, starts a
# grandchild that sleeps too, and sleeps.
out="$1"; shift
stdin=$(cat)
printf '%s|env:%s,%s,%s,%s,%s,%s,%s|stdin:%s\n' "$*" "$MAILROOM_HOOK" "$MAILROOM_TASK" \
  "$MAILROOM_STATE" "$MAILROOM_OUTCOME" "$MAILROOM_AGENT" "$MAILROOM_RECORD" \
  "$MAILROOM_UNTIL" "$stdin" >> "$out"
case "${HOOK_MODE:-}" in
  fail) echo "hook broke on purpose" >&2; exit 1 ;;
  hang) sleep 600 & echo "$$ $!" > "$out.pid"; sleep 600 ;;
esac
exit 0
