#!/usr/bin/env bash
# Stage 1 for synth_en: the LM text. Every verse of the King James Bible (the corpus's source),
# cut into clauses as the corpus's sentences are, normalised like the transcripts, without any
# line that is or contains a sentence of the EVAL_DATA_DIRs (dev and test). Train transcripts
# are KJV clauses too, so they are in it. OUT.yaml says how many lines were excluded.
#   local/lm_text.sh [--tiny true] OUT EVAL_DATA_DIR...
set -euo pipefail
tiny=false   # one book (Genesis) instead of the whole Bible, so the tiny recipe builds its LM in seconds
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -ge 2 ] || { echo "usage: $0 [--tiny true] OUT EVAL_DATA_DIR..." >&2; exit 1; }
out=$1; shift
books=(); [ "$tiny" = true ] && books=(--books Genesis)
exclude=(); for d in "$@"; do exclude+=(--exclude "$d"); done
python3 "$(dirname "$0")/synth_corpus.py" lm-text "${books[@]}" "${exclude[@]}" "$out"
