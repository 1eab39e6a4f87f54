#!/bin/sh
# Answers on stdout and in $MAILROOM_OUTPUT, naming its attempt; attempt 1
# then fails (exit 3), later attempts succeed. With FAIL_ALWAYS set, every
# attempt fails.
echo "stdout of attempt $MAILROOM_ATTEMPT"
echo "answer of attempt $MAILROOM_ATTEMPT" > "$MAILROOM_OUTPUT"
if [ "$MAILROOM_ATTEMPT" = 1 ] || [ -n "${FAIL_ALWAYS:-}" ]; then
  echo "attempt $MAILROOM_ATTEMPT broke" >&2
  exit 3
fi
exit 0
