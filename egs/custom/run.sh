#!/usr/bin/env bash
# SSL on your own folder of audio: every audio file under --audio-dir (recursive; wav, flac, ogg, ...
# any format soundfile reads, any sample rate; not 16 kHz mono: converted once to a 16 kHz mono copy,
# stereo downmixed with a warning) is pretrained on; with --text FILE the transcribed files are
# fine-tuned on (CTC over the transcripts' own characters), decoded and scored.
#   bash run.sh --audio-dir /data/my_audio                              # unlabeled: stages 0-5, a pretrained encoder
#   bash run.sh --audio-dir /data/my_audio --text /data/my_text.txt     # + fine-tuning, decoding, WER table
#   bash run.sh --audio-dir DIR --text FILE --split random --dev-size 20 --test-size 20 --subsets "10min all"
#   bash run.sh --audio-dir DIR --tiny true --workdir /tmp/t            # a few steps (what the tests run)
# Without --text the recipe runs stages 0-5 and then stops, exit status 0, with a message naming
# the pretrained encoder (fine-tuning needs transcripts); --lm is then false (an LM needs text).
# Corpus options (here); every other option is the shared recipe's (bash run.sh --help):
#   --audio-dir DIR        the audio; utterance ids from the paths, speaker from the parent dir
#   --text FILE            '<file or utt id> <transcript>' lines (relative path, with or without extension, or stem)
#   --spk-from dir|none    speaker: the dir holding each file (default), or none (each file its own)
#   --split auto|speaker|random|none  held-out dev/test from the transcribed files (all files without --text):
#                          whole speakers, random files, or none (DIR's own dev/ and test/ subdirs); auto: speaker if 3+
#   --dev-size X --test-size X  a fraction (default 0.1 each) or a number of speakers (speaker) / files (random); test 0: none
#   --units-file FILE      the CTC units the transcripts must fit (default: the characters they use;
#                          the recipe's --units bpeN learns BPE pieces from them instead)
#   --min-char-count N     warn about characters seen fewer than N times (default 10)
# Fine-tuning uses the whole transcribed train part (subset 'all'); --subsets "10min all" also draws 10 min of it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
audio=; text=; spk_from=dir; split=auto; dev_size=0.1; test_size=0.1; units_file=; min_char_count=10; args=()
user_lm=
while [ $# -gt 0 ]; do
  case "$1" in
    --audio-dir|--text|--spk-from|--split|--dev-size|--test-size|--units-file|--min-char-count)
      [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
      v=${1#--}; v=${v//-/_}; [ "$v" != audio_dir ] || v=audio
      printf -v "$v" '%s' "$2"; shift 2 ;;
    --lm) [ $# -ge 2 ] || { echo "$0: --lm needs a value" >&2; exit 1; }; user_lm=$2; args+=("$1" "$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
case " ${args[*]-} " in *" --help "*|*" -h "*) awk 'NR > 1 && /^#/ { print } /^set /{ exit }' "$0"; cd "$here"; exec ../../recipes/ssl.sh --help ;; esac
[ -n "$audio" ] || { echo "$0: --audio-dir DIR is needed (a folder of audio files, searched recursively)" >&2; exit 1; }
[ -d "$audio" ] || { echo "$0: --audio-dir '$audio': not a directory" >&2; exit 1; }
case "$spk_from" in dir|none) ;; *) echo "$0: --spk-from '$spk_from': must be dir or none" >&2; exit 1 ;; esac
case "$split" in auto|speaker|random|none) ;; *) echo "$0: --split '$split': must be auto, speaker, random or none" >&2; exit 1 ;; esac
for o in dev_size test_size; do
  [[ "${!o}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "$0: --${o//_/-} '${!o}': a fraction (e.g. 0.1) or a count is needed" >&2; exit 1; }
done
[[ "$min_char_count" =~ ^[0-9]+$ ]] || { echo "$0: --min-char-count '$min_char_count': a count is needed" >&2; exit 1; }
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }  # the recipe runs in --workdir
audio=$(cd "$audio" && pwd)
opts="--audio-dir $audio --spk-from $spk_from --split $split --dev-size $dev_size --test-size $test_size --min-char-count $min_char_count"
for o in text units_file; do
  [ -n "${!o}" ] || continue
  [ -f "${!o}" ] || { echo "$0: --${o//_/-} '${!o}': no such file" >&2; exit 1; }
  opts="$opts --${o%_file} $(abs "${!o}")"  # local/prepare.sh's --text, --units
done
for p in "$audio" ${text:+"$(abs "$text")"} ${units_file:+"$(abs "$units_file")"}; do
  [[ "$p" != *[[:space:]]* ]] || { echo "$0: '$p': a path without whitespace is needed" >&2; exit 1; }
done
# A --workdir relative to where the user called from, as for the other options' paths.
for i in "${!args[@]}"; do
  if [ "${args[$i]}" = --workdir ] && [ -n "${args[$((i + 1))]-}" ] && [[ "${args[$((i + 1))]}" != /* ]]; then
    args[$((i + 1))]=$(pwd)/${args[$((i + 1))]}
  fi
done
if [ -n "$text" ]; then
  # the held-out test set exists unless --test-size is 0 (or, with --split none, DIR has no test/)
  tests="dev test"
  if [[ "$test_size" =~ ^0+(\.0+)?$ && "$split" != none ]] || { [ "$split" = none ] && [ ! -d "$audio/test" ]; }; then tests=dev; fi
  recipe=(--labeled-set train_labeled --subsets all --tiny-subsets all --test-sets "$tests")
else
  recipe=(--transcripts false --test-sets dev)
  if [ -z "$user_lm" ]; then
    echo "$0: no --text: --lm false (the LM is trained on transcripts)" >&2
    recipe+=(--lm false)
  fi
fi
cd "$here"
exec ../../recipes/ssl.sh --train-set train --dev-set dev "${recipe[@]}" --corpus-opts "$opts" ${args[@]+"${args[@]}"}
