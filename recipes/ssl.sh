#!/usr/bin/env bash
# The shared SSL recipe: data → features → k-means targets → pretraining → CTC fine-tuning → WER.
# A corpus's egs/<corpus>/run.sh calls this with its defaults; every stage is one or two
# `sslseq` calls (the logic lives in the sslseq package). Stages skip finished work (a .done
# marker holding the stage's options and the sizes and checksums of its outputs, written last),
# write outputs atomically, and can be killed and rerun.
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(dirname "$recipe_dir")
# The caller runs from egs/<corpus>, which holds local/prepare.sh.
corpus_dir=$(pwd)
. "$root_dir/tools/common.sh"

# ---------------------------------------------------------------- options (defaults)
stage=0                # first stage to run
stop_stage=7           # last stage to run
workdir=.              # where corpus/ data/ dump/ exp/ are written
nj=2                   # parallel jobs for data-parallel stages
cmd=local              # job runner for --nj stages: local | slurm (job options: conf/slurm.conf)
device=auto            # cpu | cuda | auto
ngpu=1                 # training processes per node (torchrun data parallel when > 1; CPU processes with --device cpu)
num_nodes=1            # training nodes (needs --cmd slurm: one job of num_nodes x ngpu GPUs, torchrun on each node)
tiny=false             # a tiny corpus and a few steps (tests: whole recipe in minutes)
seed=0                 # random seed for the corpus, subsets, k-means and training
hours=10               # hours of train audio to obtain (corpora that synthesize or choose a size; synth_en: dev, test 0.3 h each)
train_set=train        # unlabeled pretraining data
dev_set=dev            # validation during training
test_sets="dev test"   # decoded and scored in stage 7
skip_bad=false         # stage 1 leaves out utterances with bad audio (unreadable, NaN, < 25 ms; listed in data/<set>/bad_utts) instead of stopping
subsets="10min 1h"     # labeled subsets for CTC (durations, drawn from --labeled-set, nested: same seed; or names the corpus lists in data/labeled_subsets); tiny: --tiny-subsets
labeled_set=           # the transcribed set the subsets are drawn from; default --train-set
transcripts=true       # false: the corpus has no transcripts: stages 0-5 run, then the recipe stops with the pretrained encoder (exit 0); stages 6-7 need transcripts
tiny_subsets=1min      # the labeled subsets with --tiny true
corpus_opts=           # options of the corpus's local/prepare.sh and local/lm_text.sh (e.g. "--corpus-dir /data/ls"); part of their stage markers
feat_type=mfcc         # features for the first k-means iteration
k=                     # clusters; default 100 (tiny: 20)
model=hubert           # SSL family to pretrain
iterations=1           # HuBERT iterations: 2+ runs stage 5 (layer features → k-means → pretrain again)
iter_config=           # layer and K of each iteration after the first; default recipes/conf/hubert_iterations.yaml
pretrain_config=       # pretraining YAML; default recipes/conf/pretrain_${model}_cpu.yaml (fbank → 25 Hz, 2-core sized)
ctc_config=            # default: the pretrained family's (sslseq config default-ctc: ctc_w2vbert_cpu.yaml for w2v-BERT, else ctc_cpu.yaml)
units=chars            # CTC output units: chars (letters, apostrophe, | between words; or the corpus's data/units.txt) or bpeN (SentencePiece BPE of N pieces learnt in stage 1 from the labeled set's transcripts: data/lang_bpeN)
pretrain_steps=        # override optim.max_steps of the pretraining config
ctc_steps=             # override optim.max_steps of the CTC config
lm=true                # word n-gram LM decoding: LM built in stage 1 (data/lm, dev/test sentences excluded), weights tuned on --dev-set, then every test set decoded with them in stage 7
lm_order=3             # n-gram order of the LM
lm_arpa=               # an existing ARPA to decode with (e.g. LibriSpeech's 4-gram.arpa) instead of one trained on the LM text
lm_weights=            # LM weights tried on --dev-set; default "0.75 1 1.5 2" (tiny: "1 2")
word_scores=           # word scores tried on --dev-set; default "-2 -1 0 1" (tiny: "0")
lm_beam=               # beam of the LM search while tuning; default 50 (tiny: 16)
lm_decode_beam=        # beam of the LM decoding of every set with the tuned weights; default 500 (tiny: 16)

help_message="Usage: egs/<corpus>/run.sh [options]
  Stages: 0 corpus + data dirs, 1 validate + labeled subset, 2 features, 3 k-means targets,
          4 pretraining, 5 HuBERT iteration 2+ (--iterations), 6 CTC fine-tuning (pretrained
          and from scratch), 7 decoding + WER (RESULTS.md). With --lm true (default) stage 1 also
          builds a word n-gram LM (data/lm) and stage 7 tunes its weight on --dev-set and decodes
          every test set with it too (greedy and LM columns in RESULTS.md).
  e.g. run.sh --stage 0 --stop-stage 3; run.sh --stage 4 --model hubert; run.sh --stage 6 --subsets 1h
       run.sh --stage 5 --iterations 2   # HuBERT iteration 2 on layer features of iteration 1"
. "$root_dir/tools/parse_options.sh"

# ---------------------------------------------------------------- option checks
# Every option is checked here, before any stage touches a file (opt_*: tools/parse_options.sh).
last_stage=7
opt_int stage 0 $last_stage
opt_int stop_stage 0 $last_stage
[ "$stage" -le "$stop_stage" ] || die "--stage $stage is after --stop-stage $stop_stage: nothing would run"
opt_int nj 1
opt_one_of cmd local slurm
opt_one_of device cpu cuda auto
opt_int ngpu 1
opt_int num_nodes 1
opt_bool tiny
opt_bool skip_bad
opt_int seed 0
opt_number hours
opt_int --optional k 1
opt_one_of feat_type mfcc fbank
opt_int iterations 1
opt_int --optional pretrain_steps 1
opt_int --optional ctc_steps 1
opt_bool lm
opt_int lm_order 1
opt_int --optional lm_beam 1
opt_int --optional lm_decode_beam 1
# A subset is a duration (drawn in stage 1) or a name the corpus's data/labeled_subsets lists (checked in stage 1).
is_duration() { [[ "$1" =~ ^([0-9]+\.?[0-9]*)(h|min|s)?$ ]]; }
for sub in $subsets $tiny_subsets; do
  is_duration "$sub" || [[ "$sub" =~ ^[A-Za-z][A-Za-z0-9_]*$ ]] ||
    die "--subsets: '$sub' is not a duration (e.g. 10min, 1h, 600s), nor a name that data/labeled_subsets may list (e.g. all)"
done
opt_bool transcripts
labeled_set=${labeled_set:-$train_set}
if [ "$transcripts" = false ]; then
  [ "$stage" -le 5 ] || die "--stage $stage: stages 6-7 (CTC fine-tuning, decoding) need transcripts, and this corpus has none"
  [ "$lm" = false ] || die "--lm true needs transcripts (the LM text), and this corpus has none; use --lm false"
fi

tiny_overrides=()
if [ "$tiny" = true ]; then
  subsets=$tiny_subsets; k=${k:-20}
  pretrain_steps=${pretrain_steps:-30}; ctc_steps=${ctc_steps:-30}
  # small batches, and checkpoints often enough that a killed run really resumes mid-way
  tiny_overrides=(data.max_batch_seconds=20 save_interval=10 valid_interval=30 max_valid_batches=2)
fi
k=${k:-100}
if [ "$tiny" = true ]; then lm_weights=${lm_weights:-1 2}; word_scores=${word_scores:-0}; lm_beam=${lm_beam:-16}; lm_decode_beam=${lm_decode_beam:-16}; fi
lm_weights=${lm_weights:-0.75 1 1.5 2}; word_scores=${word_scores:-"-2 -1 0 1"}; lm_beam=${lm_beam:-50}; lm_decode_beam=${lm_decode_beam:-500}
case "$lm" in true|false) ;; *) die "--lm $lm: use true or false" ;; esac
[[ "$units" =~ ^(chars|bpe[1-9][0-9]*)$ ]] || die "--units $units: use chars or bpeN (e.g. bpe500: N SentencePiece BPE pieces)"
[[ "$lm_order" =~ ^[1-5]$ ]] || die "--lm-order $lm_order: an order 1..5 is needed"
if [ -n "$lm_arpa" ]; then
  [ -f "$lm_arpa" ] || die "--lm-arpa $lm_arpa: no such file"
  lm_arpa=$(cd "$(dirname "$lm_arpa")" && pwd)/$(basename "$lm_arpa")  # stage 1 runs in --workdir
fi
if [ "$lm" = true ] && [ ! -x "$corpus_dir/local/lm_text.sh" ]; then
  die "--lm true needs $corpus_dir/local/lm_text.sh (writes the corpus's LM text without dev/test sentences); or use --lm false"
fi
[ -n "$subsets" ] || die "--subsets: at least one labeled subset is needed (e.g. --subsets \"10min 1h\")"
pretrain_config=${pretrain_config:-$root_dir/recipes/conf/pretrain_${model}_cpu.yaml}
[ -f "$pretrain_config" ] || die "no pretraining config $pretrain_config (--model $model, --pretrain-config)"
# The CTC config's encoder section (init=none, the from-scratch runs) has the pretrained family's
# layout: the model registry names it.
if [ -z "$ctc_config" ]; then
  ctc_config=$root_dir/recipes/conf/$(sslseq config default-ctc "$pretrain_config") || die "cannot read the model of $pretrain_config"
fi
[ -f "$ctc_config" ] || die "no CTC config $ctc_config (--ctc-config)"
# --cmd slurm: tools/run_jobs.sh takes its job options from the corpus's conf/slurm.conf if it has one.
if [ -f "$corpus_dir/conf/slurm.conf" ]; then export SSLSEQ_SLURM_JOB_CONF=${SSLSEQ_SLURM_JOB_CONF:-$corpus_dir/conf/slurm.conf}; fi
iter_config=${iter_config:-$root_dir/recipes/conf/hubert_iterations.yaml}
# HuBERT learns from the k-means labels; the other families make their own targets, so their
# pretraining neither names nor waits for a label set. The model registry says which is which.
uses_labels=$(sslseq config needs-labels "$pretrain_config") || die "cannot read the model of $pretrain_config"
if [ "$iterations" -gt 1 ]; then
  [ "$uses_labels" = true ] || die "--iterations $iterations: only HuBERT iterates on its own layer features (use --model hubert)"
  [ -f "$iter_config" ] || die "no iteration config $iter_config (--iter-config)"
fi

if [ "$transcripts" = false ] && [ "$stop_stage" -ge 6 ]; then
  log "no transcripts: stages $stage-5 run, then the recipe stops with the pretrained encoder (stages 6-7 need transcripts)"
fi
mkdir -p "$workdir" && cd "$workdir"
label_tag=${feat_type}_k${k}
pretrain_tag=$(basename "$pretrain_config" .yaml); [ "$uses_labels" = false ] || pretrain_tag=${pretrain_tag}_${label_tag}
pretrain_dir=exp/${pretrain_tag}
# BPE units: their SentencePiece model (stage 1), the CTC dirs' names and the LM dir spelled in them.
units_tag=; units_file=; lm_dir=data/lm
if [ "$units" != chars ]; then units_tag=_$units; units_file=data/lang_$units/bpe.model; lm_dir=data/lm_$units; fi
# The data dir of labeled subset $1: one the corpus prepared itself (data/labeled_subsets, written
# by local/prepare.sh: '<subset> <data dir>' lines, e.g. Libri-light's folds), else one drawn from
# the train set by duration in stage 1.
labeled_dir() {
  local d; d=$(awk -v s="$1" '$1 == s { print $2 }' data/labeled_subsets 2>/dev/null)
  [ -n "$d" ] || is_duration "$1" || die "--subsets: '$1' is not a duration, and data/labeled_subsets does not list it"
  echo "${d:-${labeled_set}_$1}"
}
# The corpus's own CTC units (data/units.txt, written by local/prepare.sh: e.g. the letters of a
# user's language), else the default A-Z; the options that hand them to validation, training and the LM.
units_opts() { [ ! -f data/units.txt ] || echo "$1data/units.txt"; }
# The CTC experiment of labeled subset $1 from init $2 (a pretrained dir or none).
ctc_dir() { if [ "$2" = none ]; then echo "exp/$(basename "$ctc_config" .yaml)${units_tag}_${train_set}_$1_scratch"; else echo "exp/$(basename "$ctc_config" .yaml)${units_tag}_${train_set}_$1_from_$(basename "$2")"; fi; }
steps_override() { [ -z "$1" ] || echo "optim.max_steps=$1"; }
[ "$num_nodes" -eq 1 ] || [ "$cmd" = slurm ] || die "--num-nodes $num_nodes needs --cmd slurm (srun starts torchrun on every node)"
# Train into $1 with the config $2 (and overrides): `sslseq train` with $ngpu processes per node
# (tools/launch_train.sh), here or as one Slurm job of $num_nodes nodes (GPUs unless --device cpu).
train() {
  local out=$1 config=$2; shift 2
  local launch=("$root_dir/tools/launch_train.sh" "$ngpu" train "$config" out_dir="$out" "$@")
  if [ "$cmd" = slurm ]; then
    local gpus=$ngpu; [ "$device" != cpu ] || gpus=0
    "$root_dir/tools/run_jobs.sh" --cmd slurm --nodes "$num_nodes" --gpu "$gpus" --cpus "$ngpu" \
      JOB=0:0 "$out/log/train.log" "${launch[@]}"
  else
    "${launch[@]}"
  fi
}
# Train as train() does unless the marker of $1 says it is done: it holds the trainer's fingerprint
# of the resolved config (the YAML, the model_config it includes, the overrides: `sslseq train
# --fingerprint`) and $3, the markers of the inputs ("name=ID ...": data, labels, init model),
# and records the files $4; the rest are the overrides.
train_stage() {
  local out=$1 config=$2 inputs=$3 outputs=$4 opts; shift 4
  opts="train=$(sslseq train --fingerprint "$config" out_dir="$out" "$@") $inputs" || die "cannot read the training config $config"
  if stage_todo "$out" "$opts"; then
    train "$out" "$config" "$@"
    # shellcheck disable=SC2086  # file names, one word each
    mark_done "$out" "$opts" $outputs
  fi
}

# HuBERT iteration $1 (>= 2): its settings from $iter_config and the names of what it writes.
iteration() {
  local it=$1 get="sslseq config get $iter_config iterations.$(($1 - 2))"
  it_layer=$($get.layer) || die "$iter_config: iteration $it needs an entry with 'layer' (and 'k')"
  it_k=$($get.k) || die "$iter_config: iteration $it needs 'k'"
  it_config=$($get.pretrain_config --default "") || exit 1
  it_config=${it_config:-$pretrain_config}
  [[ "$it_config" = /* ]] || it_config=$root_dir/recipes/conf/$it_config
  [ -f "$it_config" ] || die "$iter_config: iteration $it: no pretraining config $it_config"
  it_feats=layer_it${it}_L${it_layer}
  it_label_tag=it${it}_L${it_layer}_k${it_k}
  it_dir=exp/$(basename "$it_config" .yaml)_${it_label_tag}
}
# Stages 6-7 fine-tune the last iteration's model.
final_pretrain_dir=$pretrain_dir
for ((i = 2; i <= iterations; i++)); do
  iteration "$i"
  final_pretrain_dir=$it_dir
done

# Features of type $1 for the sets $2 into dump/$3/<set> (--nj shards); type layer also takes
# the model dir $4 and the layer index $5.
dump_features() {
  local type=$1 sets=$2 name=$3 set out opts layer_opts=()
  if [ "$type" = layer ]; then layer_opts=(--checkpoint "$4" --layer "$5"); fi
  for set in $sets; do
    out=dump/$name/$set
    opts="type=$type nj=$nj data=$(marker_id data)"
    [ "$type" != layer ] || opts="$opts layer=$5 model=$(marker_id "$4")"
    if stage_todo "$out" "$opts"; then
      "$root_dir/tools/run_jobs.sh" --cmd "$cmd" --max-parallel "$nj" "JOB=0:$((nj - 1))" "$out/log/dump.JOB.log" \
        sslseq feats dump --type "$type" --nj "$nj" --rank JOB --device "${device/auto/cpu}" "${layer_opts[@]}" \
        "data/$set" "$out"
      sslseq feats check --nj "$nj" "$out"
      mark_done "$out" "$opts" '*.npy' '*.len' '*.utts' '*.sums' feats.yaml
    fi
  done
}

# k-means with $1 clusters on dump/$2/$train_set; labels of the sets $3 into dump/labels/$4.
# Labelling runs as --nj jobs, each one block of utterances (<set>.km.parts/), then one join.
kmeans_targets() {
  local k=$1 feats=$2 sets=$3 tag=$4 km_dir=exp/kmeans_$4 lab_dir=dump/labels/$4 set opts
  opts="k=$k seed=$seed feats=$(marker_id "dump/$feats/$train_set")"
  if stage_todo "$km_dir" "$opts"; then
    sslseq kmeans fit --k "$k" --seed "$seed" --device "$device" "dump/$feats/$train_set" "$km_dir/model.safetensors"
    mark_done "$km_dir" "$opts" model.safetensors
  fi
  opts="model=$(marker_id "$km_dir")"
  if stage_todo "$lab_dir" "$opts"; then
    for set in $sets; do
      "$root_dir/tools/run_jobs.sh" --cmd "$cmd" --max-parallel "$nj" "JOB=0:$((nj - 1))" "$lab_dir/log/label_$set.JOB.log" \
        sslseq kmeans label --nj "$nj" --rank JOB --device "$device" \
        "$km_dir/model.safetensors" "dump/$feats/$set" "$lab_dir/$set.km"
      sslseq kmeans label --nj "$nj" --device "$device" "$km_dir/model.safetensors" "dump/$feats/$set" "$lab_dir/$set.km"
    done
    mark_done "$lab_dir" "$opts" '*.km' '*.utts' labels.yaml dict.km.txt
  fi
}

# What later stages read of a finished training dir (recorded in its marker: a damaged or deleted
# model redoes the stage; not train_summary.yaml, whose timings differ when a redo resumes).
model_files="model.safetensors config.yaml"
# Pretrain with config $1 into $2 on the labels dump/labels/$3 (for HuBERT; the others ignore them).
pretrain() {
  local config=$1 out=$2 labels=dump/labels/$3 inputs
  inputs="data=$(marker_id data)"; [ "$uses_labels" = false ] || inputs="$inputs labels=$(marker_id "$labels")"
  train_stage "$out" "$config" "$inputs" "$model_files" seed="$seed" device="$device" \
    data.train="data/$train_set" data.valid="data/$dev_set" \
    data.labels_train="$labels/$train_set.km" data.labels_valid="$labels/$dev_set.km" \
    $(steps_override "$pretrain_steps") "${tiny_overrides[@]}"
}
all_sets=$(echo "$train_set $dev_set $test_sets" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
# The sets whose sentences must stay out of the LM text, and what stage 7 decodes greedily
# (the dev set too when the LM is tuned on it).
eval_sets=$(echo "$dev_set $test_sets" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd ' ')
decode_sets=$test_sets; [ "$lm" = false ] || decode_sets=$(echo "$test_sets $dev_set" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd ' ')

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

# ---------------------------------------------------------------- 0: corpus and data dirs
if run_stage 0; then
  log "stage 0: obtain the corpus and make data dirs"
  opts="hours=$hours tiny=$tiny seed=$seed"; [ -z "$corpus_opts" ] || opts="$opts corpus_opts=$corpus_opts"
  if stage_todo data "$opts"; then
    # shellcheck disable=SC2086  # corpus_opts: words, one option or value each
    "$corpus_dir/local/prepare.sh" --hours "$hours" --tiny "$tiny" --seed "$seed" --nj "$nj" $corpus_opts corpus data
    mark_done data "$opts"
  fi
fi

# ---------------------------------------------------------------- 1: validate, labeled subset
if run_stage 1; then
  log "stage 1: validate data dirs$([ "$transcripts" = false ] || echo ", labeled subsets $subsets")"
  for set in $all_sets; do
    sslseq data validate $([ "$skip_bad" = false ] || echo --drop-bad) $(units_opts "--units ") "data/$set"
  done
  for sub in $subsets; do
    [ "$transcripts" = true ] || break  # nothing to fine-tune on
    labeled=$(labeled_dir "$sub")
    if [ "$labeled" != "${labeled_set}_$sub" ]; then  # prepared by stage 0: checked, recorded, not drawn
      opts="prepared=$sub data=$(marker_id data)"
      if stage_todo "data/$labeled" "$opts"; then
        sslseq data validate $([ "$skip_bad" = false ] || echo --drop-bad) $(units_opts "--units ") "data/$labeled"
        mark_done "data/$labeled" "$opts" wav.scp text utt2spk spk2utt utt2dur
      fi
      continue
    fi
    opts="subset=$sub seed=$seed data=$(marker_id data)"
    if stage_todo "data/${labeled_set}_$sub" "$opts"; then
      sslseq data subset --duration "$sub" --seed "$seed" "data/$labeled_set" "data/${labeled_set}_$sub"
      mark_done "data/${labeled_set}_$sub" "$opts" wav.scp text utt2spk spk2utt utt2dur
    fi
  done
  if [ -n "$units_file" ]; then
    opts="units=$units data=$(marker_id data)"
    if stage_todo "$(dirname "$units_file")" "$opts"; then
      log "stage 1: ${units#bpe} BPE units from the transcripts of data/$labeled_set → $(dirname "$units_file")"
      sslseq data bpe --vocab-size "${units#bpe}" "data/$labeled_set" "$(dirname "$units_file")"
      mark_done "$(dirname "$units_file")" "$opts" bpe.model units.txt
    fi
  fi
  if [ "$lm" = true ]; then
    opts="order=$lm_order tiny=$tiny data=$(marker_id data) eval=$eval_sets"; [ -z "$corpus_opts" ] || opts="$opts corpus_opts=$corpus_opts"
    [ -z "$units_file" ] || opts="$opts units=$(marker_id "$(dirname "$units_file")")"
    # a given ARPA by path, size and time (hashing a 1.5 GB file on every run would be slow)
    [ -z "$lm_arpa" ] || opts="$opts arpa=$lm_arpa $(stat -c '%s %Y' "$lm_arpa")"
    if stage_todo "$lm_dir" "$opts"; then
      log "stage 1: LM text without the sentences of $eval_sets, $lm_order-gram LM → $lm_dir"
      # shellcheck disable=SC2086
      "$corpus_dir/local/lm_text.sh" --tiny "$tiny" $corpus_opts "$lm_dir/text" $(for set in $eval_sets; do echo "data/$set"; done)
      sslseq lm check-overlap $(units_opts "--units ") "$lm_dir/text" $(for set in $eval_sets; do echo "data/$set"; done)
      arpa_opt=(); [ -z "$lm_arpa" ] || arpa_opt=(--arpa "$lm_arpa")
      # the lexicon spelled in the CTC units: BPE pieces (--units bpeN), the corpus's own letters, or A-Z
      if [ -n "$units_file" ]; then arpa_opt+=(--units "$units_file"); else arpa_opt+=($(units_opts "--units ")); fi
      sslseq lm build --order "$lm_order" --dev "data/$dev_set" "${arpa_opt[@]}" "$lm_dir/text" "$lm_dir"
      mark_done "$lm_dir" "$opts" text text.yaml lm.arpa lm.yaml lexicon.txt units.txt
    fi
  fi
fi

# ---------------------------------------------------------------- 2: features
if run_stage 2; then
  log "stage 2: $feat_type features (--nj $nj)"
  dump_features "$feat_type" "$all_sets" "$feat_type"
fi

# ---------------------------------------------------------------- 3: k-means targets
if run_stage 3; then
  log "stage 3: k-means (K=$k) on $train_set $feat_type features, labels for every set"
  kmeans_targets "$k" "$feat_type" "$all_sets" "$label_tag"
fi

# ---------------------------------------------------------------- 4: pretraining
if run_stage 4; then
  log "stage 4: pretrain $model ($pretrain_config) → $pretrain_dir"
  pretrain "$pretrain_config" "$pretrain_dir" "$label_tag"
fi

# ---------------------------------------------------------------- 5: HuBERT iteration 2+
if run_stage 5 && [ "$iterations" -gt 1 ]; then
  src_model=$pretrain_dir
  for ((i = 2; i <= iterations; i++)); do
    iteration "$i"
    log "stage 5: HuBERT iteration $i: layer $it_layer of $src_model → k-means (K=$it_k) → $it_dir"
    # Pretraining reads labels of train and dev only.
    dump_features layer "$train_set $dev_set" "$it_feats" "$src_model" "$it_layer"
    kmeans_targets "$it_k" "$it_feats" "$train_set $dev_set" "$it_label_tag"
    pretrain "$it_config" "$it_dir" "$it_label_tag"
    src_model=$it_dir
  done
fi

# ---------------------------------------------------------------- 6: CTC fine-tuning
if [ "$transcripts" = false ] && [ "$stop_stage" -ge 6 ]; then
  log "no transcripts: stages 6-7 (CTC fine-tuning, decoding) are not run; the trained encoder is $(pwd)/$final_pretrain_dir" \
    "(to fine-tune it, rerun with transcripts of some of the audio: egs/custom/run.sh --text FILE)"
  exit 0
fi
if run_stage 6; then
  for sub in $subsets; do
    labeled=$(labeled_dir "$sub")
    for init in "$final_pretrain_dir" none; do
      out=$(ctc_dir "$sub" "$init")
      log "stage 6: CTC on $labeled, init=$init → $out"
      init_id=none; [ "$init" = none ] || init_id=$(marker_id "$init")
      inputs="init=$init_id data=$(marker_id "data/$labeled" data)"
      [ ! -f data/units.txt ] || inputs="$inputs units=$(md5sum < data/units.txt | cut -c1-12)"
      # BPE pieces (--units bpeN) or the corpus's own letters (data/units.txt), else A-Z
      units_opt=($(units_opts data.units=))
      [ -z "$units_file" ] || { inputs="$inputs bpe=$(marker_id "$(dirname "$units_file")")"; units_opt=(data.units="$units_file"); }
      train_stage "$out" "$ctc_config" "$inputs" "$model_files units.txt $([ -z "$units_file" ] || echo bpe.model)" \
        init="$init" seed="$seed" device="$device" data.train="data/$labeled" data.valid="data/$dev_set" \
        ${units_opt[@]+"${units_opt[@]}"} $(steps_override "$ctc_steps") "${tiny_overrides[@]}"
    done
  done
fi

# ---------------------------------------------------------------- 7: decoding and WER
if run_stage 7; then
  log "stage 7: decode and score $test_sets"
  decode_dirs=()
  exps=(); for sub in $subsets; do exps+=("$(ctc_dir "$sub" "$final_pretrain_dir")" "$(ctc_dir "$sub" none)"); done
  for exp in "${exps[@]}"; do
    for set in $decode_sets; do
      out=$exp/decode_$set
      opts="model=$(marker_id "$exp") data=$(marker_id data)"
      if stage_todo "$out" "$opts"; then
        # --nj blocks of utterances, then one call that joins them and scores; the network's
        # log-probs stay in $out/emissions/ for the LM steps below.
        "$root_dir/tools/run_jobs.sh" --cmd "$cmd" --max-parallel "$nj" "JOB=0:$((nj - 1))" "$out/log/decode.JOB.log" \
          sslseq decode --device "${device/auto/cpu}" --nj "$nj" --rank JOB "$exp" "data/$set" "$out"
        sslseq decode --device "${device/auto/cpu}" --nj "$nj" "$exp" "data/$set" "$out"
        mark_done "$out" "$opts" hyp.txt wer.yaml
      fi
      decode_dirs+=("$out")
    done
    if [ "$lm" = true ]; then
      # LM weight and word score on the dev set only (lm tune refuses test sets), from the cached emissions.
      tune_dir=$exp/decode_$dev_set/lm_tune
      opts="decode=$(marker_id "$exp/decode_$dev_set") lm=$(marker_id "$lm_dir") weights=$lm_weights scores=$word_scores beam=$lm_beam"
      if stage_todo "$tune_dir" "$opts"; then
        log "stage 7: tune the LM weight and word score of $exp on $dev_set"
        held_out=(); for set in $test_sets; do [ "$set" = "$dev_set" ] || held_out+=(--held-out "data/$set"); done
        sslseq lm tune --lm "$lm_dir" --nj "$nj" --lm-weights $lm_weights --word-scores $word_scores \
          --beam-size "$lm_beam" "${held_out[@]}" --out-dir "$tune_dir" "$exp/decode_$dev_set"
        mark_done "$tune_dir" "$opts" params.yaml grid.tsv
      fi
      for set in $decode_sets; do
        out=$exp/decode_$set/lm
        opts="decode=$(marker_id "$exp/decode_$set") params=$(marker_id "$tune_dir") beam=$lm_decode_beam"
        if stage_todo "$out" "$opts"; then
          # the same --nj as the greedy decode, so its cached emissions are read (the network is not run);
          # the tuned weights with a wider beam than tuning's
          sslseq decode --device "${device/auto/cpu}" --nj "$nj" --lm "$lm_dir" --lm-params "$tune_dir/params.yaml" \
            --beam-size "$lm_decode_beam" "$exp" "data/$set" "$exp/decode_$set"
          mark_done "$out" "$opts" hyp.txt wer.yaml
        fi
      done
    fi
  done
  sslseq results --out exp/RESULTS.md "${decode_dirs[@]}"
  log "results: $(pwd)/exp/RESULTS.md"
fi
