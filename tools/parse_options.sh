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

# Checks of option values, for a recipe's one validation block (run before anything is touched):
#   opt_int [--optional] NAME MIN [MAX]   a decimal integer (--optional: or empty)
#   opt_number NAME                       a positive decimal number (e.g. 10, 0.5)
#   opt_bool NAME                         true or false
#   opt_one_of NAME VALUE...              one of the values
# A bad value exits with one line naming the option, the value and what it must be.
__bad_option() { echo "${0##*/}: --${1//_/-} '${!1-}': must be $2" >&2; exit 1; }
opt_int() {
  local optional=false; if [ "$1" = --optional ]; then optional=true; shift; fi
  local name=$1 min=$2 max=${3-} v=${!1-} range
  range="an integer >= $min"; [ -z "$max" ] || range="an integer from $min to $max"
  if [ -z "$v" ] && [ "$optional" = true ]; then return 0; fi
  [[ "$v" =~ ^(0|[1-9][0-9]{0,17})$ ]] || __bad_option "$name" "$range"
  [ "$v" -ge "$min" ] && { [ -z "$max" ] || [ "$v" -le "$max" ]; } || __bad_option "$name" "$range"
}
opt_number() { [[ "${!1-}" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && [[ "${!1}" =~ [1-9] ]] || __bad_option "$1" "a positive number"; }
opt_bool() { case "${!1-}" in true|false) ;; *) __bad_option "$1" "true or false" ;; esac; }
opt_one_of() {
  local name=$1 v; shift
  for v in "$@"; do [ "${!name-}" != "$v" ] || return 0; done
  __bad_option "$name" "one of: $*"
}
