# Kaldi-style option parsing, sourced by recipes after they set their defaults.
#   --some-option VALUE   sets the existing shell variable some_option
#   --some-option=VALUE   the same
#   --config FILE         sources FILE (lines like some_option=value) before later options
#   --help                prints $help_message and the current defaults, then exits
# An unknown option is an error that lists the valid ones.

# The options are the recipe's documented assignments: lines `name=default  # what it is`.
__option_lines=$(grep -E '^[a-z][a-z0-9_]*=[^#]*#' "$0" || true)
__option_names=$(printf '%s\n' "$__option_lines" | sed -E 's/=.*//' | tr '\n' ' ')

__valid_options() {
  local name doc
  for name in $__option_names; do
    doc=$(printf '%s\n' "$__option_lines" | grep -E "^$name=" | head -1 | sed -E 's/^[^#]*#[[:space:]]*//')
    printf '  --%-18s %s (now: %s)\n' "${name//_/-}" "$doc" "${!name-}"
  done
}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      printf '%s\n\nOptions:\n' "${help_message:-Usage: $0 [options]}"
      __valid_options
      exit 0 ;;
    --config)
      [ $# -ge 2 ] || { echo "$0: --config needs a file" >&2; exit 1; }
      [ -f "$2" ] || { echo "$0: config file $2 not found" >&2; exit 1; }
      # shellcheck disable=SC1090
      . "$2"; shift 2 ;;
    --*=*)
      __name=${1%%=*}; __name=${__name#--}; __name=${__name//-/_}; __value=${1#*=}
      if [ -z "${!__name+x}" ] || [[ " $__option_names " != *" $__name "* ]]; then
        echo "$0: unknown option ${1%%=*}. Valid options:" >&2; __valid_options >&2; exit 1
      fi
      printf -v "$__name" '%s' "$__value"; shift ;;
    --*)
      __name=${1#--}; __name=${__name//-/_}
      if [ -z "${!__name+x}" ] || [[ " $__option_names " != *" $__name "* ]]; then
        echo "$0: unknown option $1. Valid options:" >&2; __valid_options >&2; exit 1
      fi
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
      printf -v "$__name" '%s' "$2"; shift 2 ;;
    *) break ;;
  esac
done
