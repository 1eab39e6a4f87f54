#!/bin/sh
# Queues a follow-up with `mailroom add --file` (the binary is $MB), at once.
printf 'description: more work from %s\n' "$MAILROOM_TASK" > "$MAILROOM_RUN_DIR/next.yaml"
exec "$MB" add --file "$MAILROOM_RUN_DIR/next.yaml" --name "$MAILROOM_TASK-c"
