#!/usr/bin/env bash
# Stage 0 for a folder of your own audio: data dirs train, dev (+ test, train_labeled, units.txt and
# labeled_subsets with --text) in DATA_DIR, 16 kHz mono copies of the files that are not 16 kHz mono in
# CORPUS_DIR/audio ('sslseq corpus custom': sslseq/data/custom.py).
#   local/prepare.sh --audio-dir DIR [--text FILE] [--spk-from dir|none] [--split S] [--dev-size X] [--test-size X]
#                    [--units FILE] [--min-char-count N] [--seed S] [--nj N] CORPUS_DIR DATA_DIR
set -euo pipefail
audio_dir=          # the audio, searched recursively
text=               # '<file or utt id> <transcript>' lines
spk_from=dir        # dir | none
split=auto          # auto | speaker | random | none (DIR's dev/ and test/)
dev_size=0.1        # fraction, or number of speakers / files
test_size=0.1       # as dev_size; 0: no test set
units=              # units file the transcripts must fit (default: their characters)
min_char_count=10   # warn about characters seen fewer times
seed=0              # the held-out draw
nj=1                # files converted in parallel
hours=0             # unused: the folder has its own size
tiny=false          # unused: a tiny run uses a small folder
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -eq 2 ] && [ -n "$audio_dir" ] || { echo "usage: $0 --audio-dir DIR [options] CORPUS_DIR DATA_DIR" >&2; exit 1; }
extra=()
[ -z "$text" ] || extra+=(--text "$text")
[ -z "$units" ] || extra+=(--units "$units")
sslseq corpus custom --spk-from "$spk_from" --split "$split" --dev-size "$dev_size" --test-size "$test_size" \
  --min-char-count "$min_char_count" --seed "$seed" --nj "$nj" ${extra[@]+"${extra[@]}"} "$audio_dir" "$1" "$2"
