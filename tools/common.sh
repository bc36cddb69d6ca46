# Helpers sourced by recipes: logging and stage markers.

log() { printf '%s (%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$(basename "${BASH_SOURCE[1]}")" "${BASH_LINENO[0]}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A stage's work is done when its marker exists and holds the same options.
#   if stage_todo OUTDIR "opts"; then ...work...; mark_done OUTDIR "opts"; fi
# No marker means never run or killed mid-way: the work resumes (tools skip finished pieces).
# A marker with other options means the output is stale and is redone, but nothing finished is
# lost before its replacement is complete: the old result is moved aside to OUTDIR.prev while the
# stage works in OUTDIR, and mark_done removes it. If the redo fails (or the recipe is
# interrupted), the old result goes back into OUTDIR and the partial redo is kept in OUTDIR.redo,
# which a rerun with the same options resumes. A redo killed outright (SIGKILL, SIGTERM: no trap,
# so that a kill is not deferred until the running command ends) is sorted out the same way by the
# next stage_todo. Options are checked before any stage runs (recipes/ssl.sh).
__redoing=()  # stage dirs being redone, their old results in DIR.prev

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

stage_todo() {
  local dir=$1 opts=$2 marker=$1/.done
  __restore_old "$dir"  # a redo killed outright: the finished result first
  if [ -f "$marker" ]; then
    if [ "$(cat "$marker")" = "$opts" ]; then
      log "skip: $dir is done (options unchanged; delete $marker to redo)"
      return 1
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
  fi
  mkdir -p "$dir"
  return 0
}

mark_done() {
  local dir=$1 opts=$2 i
  printf '%s\n' "$opts" > "$dir/.done.tmp" && mv "$dir/.done.tmp" "$dir/.done"
  rm -f "$dir/.todo"
  rm -rf "$dir.prev"
  for i in "${!__redoing[@]}"; do [ "${__redoing[$i]}" != "$dir" ] || unset "__redoing[$i]"; done
}

# The identity of upstream output, for downstream markers: changes when it is redone.
marker_id() {
  local m
  for m in "$@"; do [ -f "$m/.done" ] || die "$m is not done yet: run the earlier stage first"; done
  cat "${@/%//.done}" | md5sum | cut -c1-12
}
