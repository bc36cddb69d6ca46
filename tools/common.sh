# Helpers sourced by recipes: logging and stage markers.

log() { printf '%s (%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$(basename "${BASH_SOURCE[1]}")" "${BASH_LINENO[0]}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A stage's work is done when its marker exists and holds the same options.
#   if stage_todo OUTDIR "opts"; then ...work...; mark_done OUTDIR "opts"; fi
# A marker with other options means the output is stale: it is removed and redone.
# No marker means never run or killed mid-way: the work resumes (tools skip finished pieces).
stage_todo() {
  local dir=$1 opts=$2 marker=$1/.done
  if [ -f "$marker" ]; then
    if [ "$(cat "$marker")" = "$opts" ]; then
      log "skip: $dir is done (options unchanged; delete $marker to redo)"
      return 1
    fi
    log "options changed for $dir: redoing it"
    rm -rf "$dir"
  fi
  mkdir -p "$dir"
  return 0
}

mark_done() {
  local dir=$1 opts=$2
  printf '%s\n' "$opts" > "$dir/.done.tmp" && mv "$dir/.done.tmp" "$dir/.done"
}

# The identity of upstream output, for downstream markers: changes when it is redone.
marker_id() {
  local m
  for m in "$@"; do [ -f "$m/.done" ] || die "$m is not done yet: run the earlier stage first"; done
  cat "${@/%//.done}" | md5sum | cut -c1-12
}
