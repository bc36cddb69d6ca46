# Helpers sourced by recipes: logging and stage markers.

log() { printf '%s (%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$(basename "${BASH_SOURCE[1]}")" "${BASH_LINENO[0]}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A stage's work is done when its marker exists and holds the same options.
#   if stage_todo OUTDIR "opts"; then ...work...; mark_done OUTDIR "opts" [OUTPUT...]; fi
# No marker means never run or killed mid-way: the work resumes (tools skip finished pieces).
# The OUTPUTs (files or globs in OUTDIR: shards, labels, models) are recorded in the marker with
# their sizes and SHA-256s; a stage whose recorded outputs are missing or changed is not done:
# those files are removed and the stage resumes in place, as after a kill (the tools keep the
# intact pieces). SSLSEQ_DONE_CHECK=size compares sizes only (for outputs too big to hash on
# every run).
# A marker with other options means the output is stale and is redone, but nothing finished is
# lost before its replacement is complete: the old result is moved aside to OUTDIR.prev while the
# stage works in OUTDIR, and mark_done removes it. If the redo fails (or the recipe is
# interrupted), the old result goes back into OUTDIR and the partial redo is kept in OUTDIR.redo,
# which a rerun with the same options resumes. A redo killed outright (SIGKILL, SIGTERM: no trap,
# so that a kill is not deferred until the running command ends) is sorted out the same way by the
# next stage_todo. Options are checked before any stage runs (recipes/ssl.sh).
# Every stage logs the same two lines of each OUTDIR: "skip: OUTDIR is done" or, once its work is
# recorded, "done: OUTDIR in N s" (tests read them: a rerun that redoes nothing logs no "done:").
__redoing=()  # stage dirs being redone, their old results in DIR.prev
declare -A __started=()  # when stage_todo found each OUTDIR's work to do ($SECONDS)

# Put the old result of an unfinished redo of $1 back in place; keep the partial redo in $1.redo.
__restore_old() {
  local dir=$1
  [ -d "$dir.prev" ] || return 0
  rm -rf "$dir.redo"
  if [ -d "$dir" ]; then mv "$dir" "$dir.redo"; fi
  mv "$dir.prev" "$dir"
  log "$dir: the redo did not finish; the previous result is back in place (the partial redo, kept in $dir.redo, resumes when rerun with the same options)"
}

__restore_on_exit() {
  local rc=$? dir
  [ "$rc" -ne 0 ] || return 0
  for dir in "${__redoing[@]}"; do __restore_old "$dir"; done
  __redoing=()
}
trap __restore_on_exit EXIT
trap 'exit 130' INT

__OUTPUTS='--- outputs: bytes sha256 file'  # in a marker, after the options

# The options a marker holds (what it holds before its outputs).
__marker_opts() { awk -v end="$__OUTPUTS" '$0 == end { exit } { print }' "$1"; }

# The outputs section of DIR's marker for the globs $2...: '<bytes> <sha256> <file>' lines.
__record_outputs() {
  local dir=$1; shift
  (
    cd "$dir" && shopt -s nullglob && export LC_ALL=C
    printf '%s\n' "$__OUTPUTS"
    for pat in "$@"; do
      files=($pat)
      [ ${#files[@]} -gt 0 ] || { log "ERROR: mark_done: no output $dir/$pat"; exit 1; }
      for f in "${files[@]}"; do
        printf '%s %s %s\n' "$(stat -c %s -- "$f")" "$(sha256sum < "$f" | cut -c1-64)" "$f"
      done
    done
  )
}

# The recorded outputs of marker $1 (in dir $2) that are missing or differ, one '<file>\t<why>'
# line each; fails when there are none.
__changed_outputs() {
  local marker=$1 dir=$2 line size sum file have found=false in=false
  while IFS= read -r line; do
    if [ "$in" = false ]; then [ "$line" != "$__OUTPUTS" ] || in=true; continue; fi
    read -r size sum file <<< "$line"
    if [ ! -f "$dir/$file" ]; then
      printf '%s\t%s\n' "$dir/$file" "missing"
    elif have=$(stat -c %s -- "$dir/$file") && [ "$have" != "$size" ]; then
      printf '%s\t%s\n' "$dir/$file" "$have bytes, $size when the stage was done"
    elif [ "${SSLSEQ_DONE_CHECK:-sha256}" != size ] && [ "$(sha256sum < "$dir/$file" | cut -c1-64)" != "$sum" ]; then
      printf '%s\t%s\n' "$dir/$file" "changed since the stage was done (another SHA-256)"
    else
      continue
    fi
    found=true
  done < "$marker"
  [ "$found" = true ]
}

stage_todo() {
  local dir=$1 opts=$2 marker=$1/.done changed f why
  __restore_old "$dir"  # a redo killed outright: the finished result first
  if [ -f "$marker" ]; then
    if [ "$(__marker_opts "$marker")" = "$opts" ]; then
      if ! changed=$(__changed_outputs "$marker" "$dir"); then
        log "skip: $dir is done (options unchanged; delete $marker to redo)"
        return 1
      fi
      # Damaged outputs are not a result to keep: they go, and the stage resumes in place.
      local n=0 first=
      while IFS=$'\t' read -r f why; do
        n=$((n + 1)); [ -n "$first" ] || first="$f: $why"
        rm -f -- "$f"
      done <<< "$changed"
      log "$first$([ "$n" -eq 1 ] || echo " (and $((n - 1)) more of its outputs)"): $dir is not done after all; redoing it (its intact outputs are kept and resumed)"
      rm -f "$marker"
      __started[$dir]=$SECONDS
      return 0
    fi
    log "options changed for $dir: redoing it (the previous result waits in $dir.prev until the new one is complete)"
    mv "$dir" "$dir.prev"
    if [ -d "$dir.redo" ] && [ "$(cat "$dir.redo/.todo" 2>/dev/null)" = "$opts" ]; then
      mv "$dir.redo" "$dir"
      log "$dir: resuming the unfinished redo with these options"
    fi
    rm -rf "$dir.redo"
    mkdir -p "$dir"
    printf '%s\n' "$opts" > "$dir/.todo"  # what a partial redo was started with
    __redoing+=("$dir")
  else
    log "run: $dir"
  fi
  mkdir -p "$dir"
  __started[$dir]=$SECONDS
  return 0
}

mark_done() {
  local dir=$1 opts=$2 i
  shift 2
  { printf '%s\n' "$opts" && if [ $# -gt 0 ]; then __record_outputs "$dir" "$@"; fi; } > "$dir/.done.tmp" \
    || die "$dir: could not record the stage's outputs ($*)"
  mv "$dir/.done.tmp" "$dir/.done"
  rm -f "$dir/.todo"
  rm -rf "$dir.prev"
  for i in "${!__redoing[@]}"; do [ "${__redoing[$i]}" != "$dir" ] || unset "__redoing[$i]"; done
  log "done: $dir in $((SECONDS - ${__started[$dir]:?mark_done $dir without its stage_todo})) s"
  unset "__started[$dir]"
}

# The identity of upstream output, for downstream markers: changes when it is redone.
marker_id() {
  local m
  for m in "$@"; do [ -f "$m/.done" ] || die "$m is not done yet: run the earlier stage first"; done
  cat "${@/%//.done}" | md5sum | cut -c1-12
}
