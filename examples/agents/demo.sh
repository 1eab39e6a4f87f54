#!/bin/sh
# The demo agent: works offline, writes a readable report from the task's
# description and the shared context. mailroom passes the prompt as the last
# argument and tells us where to write through MAILROOM_* variables.
set -eu
full=${1:-}
[ -n "$full" ] || full=$(cat "${MAILROOM_PROMPT_FILE:-/dev/null}")
# The task itself is what precedes the sections mailroom adds ("---" lines).
prompt=$(printf '%s\n' "$full" | sed '/^---$/,$d')
out=${MAILROOM_OUTPUT:-/dev/stdout}
ctx=${MAILROOM_CONTEXT:-context}
project=""
if [ -f "$ctx/project_overview.md" ]; then
  project=$(grep -v '^#' "$ctx/project_overview.md" | grep -v '^[[:space:]]*$' | head -n 1 || true)
fi
{
  printf '# Demo agent report: %s\n\n' "${MAILROOM_TASK:-task}"
  printf '## Task\n\n%s\n\n' "$prompt"
  if [ -n "$project" ]; then
    printf '## Context\n\nProject overview says: %s\n\n' "$project"
  fi
  if [ -f "$ctx/current_state.md" ] && grep -q '^### ' "$ctx/current_state.md"; then
    printf 'Recently finished work I read from context/current_state.md:\n\n'
    grep '^### ' "$ctx/current_state.md" | head -n 5 | sed 's/^### /- /'
    printf '\n'
  fi
  given=$(printf '%s\n' "$full" | sed -n 's/^## Context: //p')
  if [ -n "$given" ]; then
    printf '## What mailroom gave me\n\n'
    printf '%s\n' "$given" | sed 's/^/- /'
    printf '\n'
  fi
  printf '## Plan\n\n'
  printf '1. Read the task and the shared context above.\n'
  n=1
  for w in $(printf '%s\n' "$prompt" | tr -cs '[:alnum:]' '\n' | awk 'length > 3' | head -n 4); do
    n=$((n + 1))
    printf '%d. Work out what "%s" requires and do it.\n' "$n" "$w"
  done
  printf '%d. Write the result and a summary for the next agent.\n\n' $((n + 1))
  printf '[SUMMARY]\nDemo agent planned "%s" in %d steps.\n[/SUMMARY]\n' \
    "$(printf '%s\n' "$prompt" | head -n 1 | cut -c1-120)" $((n + 1))
} > "$out"
echo "demo agent: wrote $(wc -c < "$out" 2>/dev/null || echo 0) bytes for ${MAILROOM_TASK:-task}"
