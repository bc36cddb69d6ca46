#!/usr/bin/env bash
# Stage 1 for LibriSpeech (and Mini LibriSpeech, whose local/ links here): the LM text. LibriSpeech's LM corpus (openslr.org/11
# librispeech-lm-norm.txt) when CORPUS_DIR holds it, else the pretraining set's transcripts; without
# any line that is or contains a sentence of the EVAL_DATA_DIRs.
#   local/lm_text.sh --corpus-dir DIR [--pretrain-set SET] [--tiny T] OUT EVAL_DATA_DIR...
set -euo pipefail
corpus_dir=         # may hold librispeech-lm-norm.txt
pretrain_set=train-clean-100  # its transcripts (data/<set>) are the LM text without librispeech-lm-norm.txt
eval_sets=          # unused (the EVAL_DATA_DIRs name them)
finetune=true       # unused
download=false      # unused (stage 0 downloads)
tiny=false          # unused
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -ge 2 ] && [ -n "$corpus_dir" ] || { echo "usage: $0 --corpus-dir DIR [--pretrain-set SET] OUT EVAL_DATA_DIR..." >&2; exit 1; }
out=$1; shift
src=$corpus_dir/librispeech-lm-norm.txt
if [ ! -f "$src" ]; then
  src=data/${pretrain_set//-/_}
  echo "$0: no $corpus_dir/librispeech-lm-norm.txt (openslr.org/11): the LM is trained on the transcripts of $src" >&2
fi
exclude=(); for d in "$@"; do exclude+=(--exclude "$d"); done
sslseq lm text --from "$src" "${exclude[@]}" "$out"
