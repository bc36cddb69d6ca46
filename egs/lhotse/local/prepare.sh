#!/usr/bin/env bash
# Stage 0 for lhotse manifests: one data dir per part (data/<part, '-' and '.' made '_'>) with
# `sslseq data from-lhotse`: <prefix>_cuts_<part>.jsonl.gz when there is one, else
# <prefix>_recordings_<part>.jsonl.gz with <prefix>_supervisions_<part>.jsonl.gz (without it: unlabeled).
# CORPUS_DIR (the recipe's corpus/) is not used: the audio stays where the manifests say, except
# what lhotse has to cut or mix (DATA_DIR/<set>/lhotse_audio/).
#   local/prepare.sh --manifest-dir DIR --prefix NAME --parts P1,P2,... CORPUS_DIR DATA_DIR
set -euo pipefail
manifest_dir=       # the lhotse manifests
prefix=             # the corpus name that starts their file names
parts=              # comma-separated parts
train_part=         # unused here (the LM text's source)
hours=0             # unused: the manifests say what there is
tiny=false          # unused
seed=0              # unused: nothing is drawn
nj=1                # unused
. "$(dirname "$0")/../../../tools/parse_options.sh"
[ $# -eq 2 ] && [ -n "$manifest_dir" ] && [ -n "$prefix" ] && [ -n "$parts" ] || {
  echo "usage: $0 --manifest-dir DIR --prefix NAME --parts P1,P2,... CORPUS_DIR DATA_DIR" >&2; exit 1; }
for part in ${parts//,/ }; do
  name=${part//-/_}; name=${name//./_}
  m=$manifest_dir/${prefix}
  if [ -f "${m}_cuts_$part.jsonl.gz" ]; then
    sslseq data from-lhotse --cuts "${m}_cuts_$part.jsonl.gz" "$2/$name"
  else
    sup=(); [ ! -f "${m}_supervisions_$part.jsonl.gz" ] || sup=(--supervisions "${m}_supervisions_$part.jsonl.gz")
    sslseq data from-lhotse --recordings "${m}_recordings_$part.jsonl.gz" ${sup[@]+"${sup[@]}"} "$2/$name"
  fi
done
