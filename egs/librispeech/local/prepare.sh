#!/usr/bin/env bash
# Stage 0 for LibriSpeech (and Mini LibriSpeech, whose local/ links here): data dirs of the
# pretraining set, the dev/test sets and Libri-light's labeled sets (librilight_{10min,1h,10h}, listed in DATA_DIR/labeled_subsets) from --corpus-dir.
# CORPUS_DIR (the recipe's corpus/) is not used: the audio stays where it is.
#   local/prepare.sh --corpus-dir DIR [--pretrain-set SET] [--hours H] [--tiny T] [--seed S] [--nj N] CORPUS_DIR DATA_DIR
set -euo pipefail
corpus_dir=         # LibriSpeech/ and librispeech_finetuning/
pretrain_set=train-clean-100  # LibriSpeech set (or train-460, train-960; Mini LibriSpeech: train-clean-5) to pretrain on
eval_sets=dev-clean,dev-other,test-clean,test-other  # dev/test sets, comma-separated (Mini LibriSpeech: dev-clean-2,test-clean)
finetune=true       # Libri-light's labeled sets (Mini LibriSpeech has none: the recipe draws subsets of train-clean-5)
download=false      # fetch and extract the archives --corpus-dir lacks (openslr.org/12 and /31, Libri-light)
hours=0             # unused: the corpus has its own size
tiny=false          # unused: a tiny run uses a small tree (the tests' fake one)
seed=0              # unused: nothing is drawn
nj=1                # unused: reading headers is quick
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -eq 2 ] && [ -n "$corpus_dir" ] || { echo "usage: $0 --corpus-dir DIR [--pretrain-set SET] CORPUS_DIR DATA_DIR" >&2; exit 1; }
opts=(); [ "$download" = false ] || opts+=(--download); [ "$finetune" = true ] || opts+=(--no-finetune)
sslseq corpus librispeech "${opts[@]}" --train-set "$pretrain_set" --eval-sets "${eval_sets//,/ }" "$corpus_dir" "$2"
