#!/bin/sh
# Dumps the whole environment into the root, for inspection.
env > "$MAILROOM_ROOT/$MAILROOM_TASK.fullenv"
