#!/usr/bin/env bash
# Any corpus that lhotse prepares (`lhotse prepare <corpus> ...`, icefall's data/manifests): its
# manifests become data dirs (`sslseq data from-lhotse`, stage 0), then the shared recipe runs.
#   bash run.sh --manifest-dir /data/manifests --prefix librispeech --train-part train-clean-100 \
#     --dev-part dev-clean --test-parts "dev-clean test-clean"
# Corpus options (here); every other option is the shared recipe's (bash run.sh --help):
#   --manifest-dir DIR   holds <prefix>_cuts_<part>.jsonl.gz, or <prefix>_recordings_<part>.jsonl.gz
#                        (+ <prefix>_supervisions_<part>.jsonl.gz), lhotse's names
#   --prefix NAME        the corpus name that starts the file names (librispeech, gigaspeech, ...)
#   --train-part PART    pretraining set (CTC subsets are drawn from it: it needs supervisions with text)
#   --dev-part PART      validation set;  --test-parts "PART ..."  the decoded sets (default: the dev part)
# A part's data dir is data/<part, '-' and '.' made '_'>; the LM is trained on the train part's transcripts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
manifests=; prefix=; train=; dev=; tests=; args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --manifest-dir|--prefix|--train-part|--dev-part|--test-parts)
      [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
      case "$1" in
        --manifest-dir) manifests=$2 ;; --prefix) prefix=$2 ;; --train-part) train=$2 ;; --dev-part) dev=$2 ;;
        --test-parts) tests=$2 ;;
      esac
      shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
case " ${args[*]-} " in *" --help "*|*" -h "*) sed -n '2,12p' "$0"; cd "$here"; exec ../../recipes/ssl.sh --help ;; esac
[ -n "$manifests" ] && [ -n "$prefix" ] && [ -n "$train" ] && [ -n "$dev" ] || {
  echo "$0: --manifest-dir DIR, --prefix NAME, --train-part PART and --dev-part PART are needed (bash $0 --help)" >&2; exit 1; }
[ -d "$manifests" ] || { echo "$0: --manifest-dir '$manifests': not a directory" >&2; exit 1; }
manifests=$(cd "$manifests" && pwd)  # the recipe runs from egs/lhotse
[[ "$manifests" != *[[:space:]]* ]] || { echo "$0: --manifest-dir '$manifests': a path without whitespace is needed" >&2; exit 1; }
[ -n "$tests" ] || tests=$dev
for v in "$prefix" "$train" "$dev"; do
  case "$v" in *[!A-Za-z0-9._-]*) echo "$0: '$v': a prefix or part of only letters, digits, '.', '_' and '-' is needed" >&2; exit 1 ;; esac
done
set_name() { local s=${1//-/_}; echo "${s//./_}"; }
parts=()
for p in $train $dev $tests; do
  case "$p" in *[!A-Za-z0-9._-]*|"") echo "$0: part '$p': only letters, digits, '.', '_' and '-' are allowed" >&2; exit 1 ;; esac
  case " ${parts[*]-} " in *" $p "*) ;; *) parts+=("$p") ;; esac
done
for p in "${parts[@]}"; do
  [ -f "$manifests/${prefix}_cuts_$p.jsonl.gz" ] || [ -f "$manifests/${prefix}_recordings_$p.jsonl.gz" ] || {
    echo "$0: $manifests has neither ${prefix}_cuts_$p.jsonl.gz nor ${prefix}_recordings_$p.jsonl.gz" >&2; exit 1; }
done
test_sets=$(for p in $tests; do set_name "$p"; done | paste -sd ' ')
# A --workdir relative to where the user called from, as for the other options' paths.
for i in "${!args[@]}"; do
  if [ "${args[$i]}" = --workdir ] && [ -n "${args[$((i + 1))]-}" ] && [[ "${args[$((i + 1))]}" != /* ]]; then
    args[$((i + 1))]=$(pwd)/${args[$((i + 1))]}
  fi
done
cd "$here"
parts_csv=$(IFS=,; echo "${parts[*]}")
exec ../../recipes/ssl.sh --train-set "$(set_name "$train")" --dev-set "$(set_name "$dev")" --test-sets "$test_sets" \
  --corpus-opts "--manifest-dir $manifests --prefix $prefix --parts $parts_csv --train-part $train" ${args[@]+"${args[@]}"}
