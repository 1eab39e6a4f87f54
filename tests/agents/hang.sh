#!/bin/sh
# Starts a grandchild that ignores nothing and would live forever, records its
# pid, then hangs itself.
sleep 1000 &
echo $! > "$PIDFILE.grandchild"
echo $$ > "$PIDFILE.agent"
sleep 1000
