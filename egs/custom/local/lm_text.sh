#!/usr/bin/env bash
# Stage 1 for a folder of your own audio: the LM text is the transcripts of the fine-tuning part
# (DATA_DIR/train_labeled: no dev/test utterance), normalised for the corpus's units (data/units.txt:
# its own letters), without any line that is or contains a sentence of the EVAL_DATA_DIRs.
#   local/lm_text.sh [corpus options] OUT EVAL_DATA_DIR...
set -euo pipefail
audio_dir=          # unused (stage 0)
text=               # unused: its transcripts are in data/train_labeled
spk_from=dir        # unused
split=auto          # unused
dev_size=0.1        # unused
test_size=0.1       # unused
units=              # unused: data/units.txt holds the units used
min_char_count=10   # unused
tiny=false          # unused
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -ge 2 ] || { echo "usage: $0 [corpus options] OUT EVAL_DATA_DIR..." >&2; exit 1; }
[ -f data/train_labeled/text ] || { echo "$0: no data/train_labeled/text: the LM needs transcripts (run.sh --text FILE)" >&2; exit 1; }
out=$1; shift
exclude=(); for d in "$@"; do exclude+=(--exclude "$d"); done
sslseq lm text --units data/units.txt --from data/train_labeled "${exclude[@]}" "$out"
