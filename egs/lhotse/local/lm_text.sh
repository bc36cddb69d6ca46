#!/usr/bin/env bash
# Stage 1 for lhotse manifests: the LM text is the train part's transcripts (data/<set>/text),
# without any line that is or contains a sentence of the EVAL_DATA_DIRs (--lm-arpa FILE decodes
# with an existing LM instead).
#   local/lm_text.sh --train-part PART OUT EVAL_DATA_DIR...
set -euo pipefail
train_part=         # its data dir's transcripts
manifest_dir=       # unused (stage 0 reads the manifests)
prefix=             # unused
parts=              # unused
tiny=false          # unused
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -ge 2 ] && [ -n "$train_part" ] || { echo "usage: $0 --train-part PART OUT EVAL_DATA_DIR..." >&2; exit 1; }
out=$1; shift
dir=data/${train_part//-/_}; dir=${dir//./_}
[ -f "$dir/text" ] || { echo "$0: $dir has no text (unlabeled manifests): use --lm false or --lm-arpa FILE" >&2; exit 1; }
exclude=(); for d in "$@"; do exclude+=(--exclude "$d"); done
sslseq lm text --from "$dir" "${exclude[@]}" "$out"
