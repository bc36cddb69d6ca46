#!/usr/bin/env bash
# LibriSpeech (openslr.org/12) + Libri-light's labeled sets (librispeech_finetuning): pretrain on
# --pretrain-set, fine-tune on Libri-light's 10min (fold 0), 1h (folds 0-5), 10h (1h + 9h) or
# 100h (train-clean-100), decode dev-clean, dev-other, test-clean, test-other.
#   bash run.sh --corpus-dir /data/librispeech                     # holds LibriSpeech/ and librispeech_finetuning/
#   bash run.sh --corpus-dir /data/ls --pretrain-set train-960 --subsets "10min 1h 10h"
#   bash run.sh --corpus-dir /data/ls --download true         # fetch what is missing first
#   bash run.sh --corpus-dir /data/ls --tiny true                  # a few steps (what the tests run on a fake tree)
# Corpus options (here); every other option is the shared recipe's (bash run.sh --help):
#   --corpus-dir DIR     LibriSpeech/<set>/<spk>/<chapter>/*.flac + *.trans.txt, librispeech_finetuning/
#   --pretrain-set SET   train-clean-100 (default), train-clean-360, train-other-500, train-460, train-960;
#                        train-clean-5: Mini LibriSpeech (egs/mini_librispeech/run.sh)
#   --download true      fetch into --corpus-dir the archives it lacks (resumable, MD5-checked, extracted atomically)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus=; pretrain_set=train-clean-100; download=false; args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus-dir) [ $# -ge 2 ] || { echo "$0: --corpus-dir needs a value" >&2; exit 1; }; corpus=$2; shift 2 ;;
    --corpus-dir=*) corpus=${1#*=}; shift ;;
    --pretrain-set) [ $# -ge 2 ] || { echo "$0: --pretrain-set needs a value" >&2; exit 1; }; pretrain_set=$2; shift 2 ;;
    --pretrain-set=*) pretrain_set=${1#*=}; shift ;;
    --download) [ $# -ge 2 ] || { echo "$0: --download needs a value" >&2; exit 1; }; download=$2; shift 2 ;;
    --download=*) download=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
case " ${args[*]-} " in *" --help "*|*" -h "*) sed -n '2,13p' "$0"; cd "$here"; exec ../../recipes/ssl.sh --help ;; esac
# The corpus's sets: LibriSpeech with Libri-light's labeled folds, or Mini LibriSpeech (train-clean-5,
# egs/mini_librispeech) with subsets drawn from its train set by stage 1 and dev-clean-2 as dev.
case "$pretrain_set" in
  train-clean-100|train-clean-360|train-other-500|train-460|train-960)
    sets=(--dev-set dev_clean --test-sets "dev_clean dev_other test_clean test_other" --subsets "10min 1h 10h" --tiny-subsets 10min)
    eval_sets=dev-clean,dev-other,test-clean,test-other; finetune=true ;;
  train-clean-5)
    sets=(--dev-set dev_clean_2 --test-sets "dev_clean_2 test_clean" --subsets "10min 1h" --tiny-subsets 1min)
    eval_sets=dev-clean-2,test-clean; finetune=false ;;
  *) echo "$0: --pretrain-set '$pretrain_set': must be one of train-clean-100 train-clean-360 train-other-500 train-460 train-960 train-clean-5" >&2; exit 1 ;;
esac
[ -n "$corpus" ] || { echo "$0: --corpus-dir DIR is needed (a copy holding LibriSpeech/ and librispeech_finetuning/)" >&2; exit 1; }
case "$download" in true|false) ;; *) echo "$0: --download '$download': must be true or false" >&2; exit 1 ;; esac
[ "$download" = false ] || mkdir -p "$corpus"
[ -d "$corpus" ] || { echo "$0: --corpus-dir '$corpus': not a directory" >&2; exit 1; }
corpus=$(cd "$corpus" && pwd)  # the recipe runs from egs/librispeech
[[ "$corpus" != *[[:space:]]* ]] || { echo "$0: --corpus-dir '$corpus': a path without whitespace is needed" >&2; exit 1; }
# A --workdir, --pretrain-config or --ctc-config relative to where the user called from (the
# recipe runs in egs/librispeech).
for i in "${!args[@]}"; do
  v=${args[$((i + 1))]-}
  case "${args[$i]}" in
    --workdir) [ -z "$v" ] || [[ "$v" = /* ]] || args[$((i + 1))]=$(pwd)/$v ;;
    --pretrain-config|--ctc-config) [[ "$v" = /* ]] || [ ! -f "$v" ] || args[$((i + 1))]=$(pwd)/$v ;;
  esac
done
# LibriSpeech's official 4-gram (openslr.org/11) when the corpus dir has it (--lm-arpa FILE overrides)
lm=(); [ ! -f "$corpus/4-gram.arpa" ] || lm=(--lm-arpa "$corpus/4-gram.arpa")
cd "$here"
exec ../../recipes/ssl.sh --train-set "${pretrain_set//-/_}" "${sets[@]}" \
  --corpus-opts "--corpus-dir $corpus --pretrain-set $pretrain_set --eval-sets $eval_sets --finetune $finetune --download $download" \
  ${lm[@]+"${lm[@]}"} ${args[@]+"${args[@]}"}
