#!/usr/bin/env bash
# Stage 0 for synth_en: synthesize the corpus into CORPUS_DIR, then write Kaldi data dirs
# (train/dev/test, disjoint speakers and sentences) into DATA_DIR.
#   local/prepare.sh [--hours H] [--tiny true] [--seed S] [--nj N] CORPUS_DIR DATA_DIR
set -euo pipefail
hours=10     # hours of train audio (dev and test: 0.3 h each)
tiny=false   # a few minutes of audio, for tests
seed=0       # random seed: same seed, same corpus
nj=2         # parallel synthesis processes
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -eq 2 ] || { echo "usage: $0 [--hours H] [--tiny true] [--seed S] [--nj N] CORPUS_DIR DATA_DIR" >&2; exit 1; }
tiny_flag=(); [ "$tiny" = true ] && tiny_flag=(--tiny)
synth=$(dirname "$0")/synth_corpus.py
python3 "$synth" synth --hours "$hours" --seed "$seed" --nj "$nj" "${tiny_flag[@]}" "$1"
python3 "$synth" prepare "$1" "$2"
