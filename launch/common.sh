# shellcheck shell=bash
# Shared by the launchers in launch/ (sourced, not run): one-line usage errors and shell-quoted command lines.

# One `error: ...` line on stderr, exit status 2.
fail() {
  echo "error: $*" >&2
  exit 2
}

# Prints its arguments as one command line, each word shell-quoted (printf %q), separated by single spaces;
# no newline, so a caller can append a redirection.
show() {
  local line="" word
  for word in "$@"; do
    line+="${line:+ }$(printf '%q' "$word")"
  done
  printf '%s' "$line"
}
