#!/bin/sh
# mailroom-task.sh: submit a task file (or standard input) to a mailroom tree and
# print the new task's name. A thin wrapper over `mailroom add --file`, so the file
# is validated first and goes in through tasks/tmp/ (never half-written in pending/).
#
#   mailroom-task.sh [--root DIR] [--name NAME] [FILE | -]
#
#   FILE        a YAML task file; its name (without .yaml) becomes the task's name
#               unless --name is given. `-` or no FILE: read the task from stdin
#               (the name is then generated unless --name is given).
#   --root DIR  the tree to submit to; default: $MAILROOM_ROOT, else the current
#               directory (mailroom's own default).
#   --name N    the task's name; refused if a task of that name exists.
#
# Works from any directory. Needs `mailroom` on PATH, or MAILROOM_BIN=/path/to/mailroom.
# Exit status: mailroom's (0 submitted, 1 refused, with the reason on stderr, 2 usage).
# Editors: examples/editor/mailroom.vim (:MailroomSubmit) calls this script.

set -eu

usage() {
    sed -n '5,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

root=
name=
file=
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --name) [ $# -ge 2 ] || usage; name=$2; shift 2 ;;
        --name=*) name=${1#--name=}; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -) break ;;
        -*) echo "mailroom-task.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
case $# in
    0) file=- ;;
    1) file=$1 ;;
    *) echo "mailroom-task.sh: one file at a time" >&2; usage ;;
esac

set -- "${MAILROOM_BIN:-mailroom}"
if [ -n "$root" ]; then
    set -- "$@" --root "$root"
fi
set -- "$@" add --file "$file"
if [ -n "$name" ]; then
    set -- "$@" --name "$name"
fi
exec "$@"
