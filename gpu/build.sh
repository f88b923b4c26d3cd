#!/usr/bin/env bash
# Build the CUDA binaries the GPU check needs and collect them, stripped, into
# target/gpu-bundle/ (inside the repo's gitignored target/, so the device tool
# can carry it). Stripped, the four are still ~190 MB (each embeds ~32 MB of
# candle-kernels' sm_90a fatbin and ~5 MB of PTX), so the bundle holds them as
# one xz-compressed tar (they share most bytes), which gpu/check.sh unpacks:
#   target/gpu-bundle/bundle.tar.xz   fused, deep, softmax, xtask
#   target/gpu-bundle/BUILD.txt       provenance + sha256 of the four
# The stripped binaries also stay in $CARGO_TARGET_DIR/gpu-stage/ for inspection.
#
# Run from anywhere, with the toolkit's env.sh sourced:
#
#   source /tmp/cuda13/env.sh
#   CARGO_TARGET_DIR=/tmp/target-cuda13 bash gpu/build.sh
#
# Cargo builds into $CARGO_TARGET_DIR as set by the caller (cargo's default,
# the repo's target/, when unset). Each executable is taken from cargo's JSON
# messages (the `executable` field), never by globbing target/.
#
#   fused     hessfree-model's integration test `fused` (dev profile)
#   deep      hessfree-model's integration test `deep` (dev profile)
#   softmax   the root package's criterion bench `softmax` (bench profile)
#   xtask     the harness binary (dev profile)
#
# Env: BUNDLE_MAX_MIB (default 40), CARGO (default cargo).
set -euo pipefail

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
BUNDLE=$ROOT/target/gpu-bundle
STAGE=${CARGO_TARGET_DIR:-$ROOT/target}/gpu-stage
MAX_MIB=${BUNDLE_MAX_MIB:-40}
CARGO=${CARGO:-cargo}

# --- preconditions -----------------------------------------------------------
[[ -n ${CUDA_HOME:-} ]] || die "CUDA_HOME is unset: source DIR/env.sh from gpu/toolkit.sh first"
[[ ${CUDARC_CUDA_VERSION:-} == 13000 ]] \
  || die "CUDARC_CUDA_VERSION is '${CUDARC_CUDA_VERSION:-}', expected 13000 (the GPU machines' driver is CUDA 13.0)"
command -v nvcc >/dev/null || die "nvcc is not on PATH (source DIR/env.sh)"
nvcc_rel=$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[[ $nvcc_rel == 13.0 ]] \
  || die "nvcc on PATH ($(command -v nvcc)) is release '$nvcc_rel', expected 13.0: its PTX would not load on a 13.0 driver"
[[ -f $CUDA_HOME/lib/stubs/libcuda.so || -f $CUDA_HOME/lib64/stubs/libcuda.so ]] \
  || die "no libcuda link stub under $CUDA_HOME/lib/stubs (rerun gpu/toolkit.sh)"
command -v python3 >/dev/null || die "python3 is needed to read cargo's JSON messages"
command -v strip >/dev/null || die "strip (binutils) is not on PATH"
command -v xz >/dev/null || die "xz is not on PATH (needed to compress the bundle)"
grep -q '^cuda *=' xtask/Cargo.toml \
  || die "xtask/Cargo.toml has no 'cuda' feature: cannot build the CUDA harness"

log "CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-<unset: cargo default $ROOT/target>}"
log "CUDA_HOME=$CUDA_HOME  nvcc $nvcc_rel  CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-<unset>}"

# Runs cargo with --message-format=json and prints the `executable` of the
# artifact whose target is named NAME and has kind KIND; cargo's own
# diagnostics (stderr) pass through.
build_one() { # NAME KIND cargo-args...
  local name=$1 kind=$2; shift 2
  local json exe t0
  json=$(mktemp)
  t0=$SECONDS
  log "cargo $* --message-format=json-render-diagnostics"
  if ! "$CARGO" "$@" --message-format=json-render-diagnostics > "$json"; then
    rm -f "$json"
    die "'cargo $*' failed (see the errors above)"
  fi
  exe=$(python3 - "$json" "$name" "$kind" <<'PY'
import json, sys
path, name, kind = sys.argv[1:]
found = []
for line in open(path):
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact":
        continue
    t = m.get("target", {})
    if t.get("name") == name and kind in t.get("kind", []) and m.get("executable"):
        found.append(m["executable"])
if len(set(found)) != 1:
    sys.exit(f"expected one executable for {kind} '{name}', cargo reported {found}")
print(found[0])
PY
  ) || { rm -f "$json"; die "could not find the $kind '$name' in cargo's JSON output"; }
  rm -f "$json"
  [[ -x $exe ]] || die "cargo reported $exe, which is not an executable file"
  log "$kind $name: $exe ($((SECONDS - t0)) s)"
  cp -f "$exe" "$STAGE/$name"
  strip "$STAGE/$name"
}

# The binaries in the bundle; check.sh expects the same names.
BINARIES=(fused deep softmax xtask)

rm -rf "$BUNDLE" "$STAGE"
mkdir -p "$BUNDLE" "$STAGE"

build_one fused   test  test  -p hessfree-model --features cuda --test fused --no-run
build_one deep    test  test  -p hessfree-model --features cuda --test deep --no-run
build_one softmax bench bench --features cuda --bench softmax --no-run
build_one xtask   bin   build -p xtask --features cuda

# --- checks ------------------------------------------------------------------
# 1. PTX embedded by candle-kernels must be ISA <= 9.0 (CUDA 13.0), or the 13.0
#    driver's JIT rejects it (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
for f in "${BINARIES[@]}"; do
  vers=$(grep -aoE '^\.version [0-9]+\.[0-9]+' "$STAGE/$f" | sort -u | awk '{print $2}' | tr '\n' ' ')
  [[ -n $vers ]] || die "$f: no embedded PTX found ('.version' lines); was candle-kernels built?"
  for v in $vers; do
    awk -v v="$v" 'BEGIN { split(v, a, "."); exit !((a[1] < 9) || (a[1] == 9 && a[2] <= 0)) }' \
      || die "$f embeds PTX ISA $v, newer than 9.0 (CUDA 13.0): built with the wrong nvcc"
  done
  log "$f: embedded PTX ISA versions: $vers"
done
# 2. dynamic dependencies: libcuda.so.1 (driver) and the 13.x libraries only.
for f in "${BINARIES[@]}"; do
  needed=$(readelf -d "$STAGE/$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
  log "$f needs: $needed"
  [[ " $needed " == *" libcuda.so.1 "* ]] || die "$f does not need libcuda.so.1 (stub with a wrong SONAME?)"
  [[ " $needed " != *" libcuda.so "* ]] || die "$f needs unversioned libcuda.so: the stub lacks SONAME libcuda.so.1"
done
# 3. the driver symbols referenced must exist in the 13.0 driver API; cudarc
#    pinned to 13000 guarantees it, this just records them.
undef=$(nm -D --undefined-only "${BINARIES[@]/#/$STAGE/}" \
        | awk '$2 ~ /^cu[A-Z]/ {print $2}' | sort -u | wc -l)

{
  echo "built: $(date -u +%FT%TZ) on $(uname -srm)"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-}"
  echo "driver symbols referenced: $undef"
  echo "needs: $(objdump -T "${BINARIES[@]/#/$STAGE/}" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1) (glibc), driver >= 580 (CUDA 13.0)"
  grep '^#   ' "$CUDA_HOME/env.sh" 2>/dev/null | sed 's/^#   /wheel: /' || true
  echo "sha256 (stripped binaries, in bundle.tar.xz):"
  (cd "$STAGE" && sha256sum "${BINARIES[@]}")
} > "$BUNDLE/BUILD.txt"

# --- compress ------------------------------------------------------------------
# One xz stream over all of them (a 64 MiB dictionary spans the shared fatbin);
# single-threaded, since xz -T splits the input into independent blocks.
log "compressing (xz -9, ~1 min)"
t0=$SECONDS
tar -C "$STAGE" --owner=0 --group=0 -cf - "${BINARIES[@]}" | xz -9 -T1 > "$BUNDLE/bundle.tar.xz" \
  || die "compressing the bundle failed"
log "compressed in $((SECONDS - t0)) s"

# --- sizes -------------------------------------------------------------------
mib() { awk -v s="$1" 'BEGIN { printf "%.1f", s / 1048576 }'; }
for f in "${BINARIES[@]}"; do
  sz=$(stat -c %s "$STAGE/$f")
  printf 'build.sh: %-14s %10d bytes  (%s MiB, stripped, uncompressed)\n' "$f" "$sz" "$(mib "$sz")" >&2
done
total=0
for f in "$BUNDLE"/*; do
  sz=$(stat -c %s "$f")
  total=$((total + sz))
  printf 'build.sh: %-14s %10d bytes  (%s MiB)\n' "$(basename "$f")" "$sz" "$(mib "$sz")" >&2
done
printf 'build.sh: bundle total %d bytes (%s MiB) in %s\n' "$total" "$(mib "$total")" "$BUNDLE" >&2
(( total <= MAX_MIB * 1048576 )) \
  || die "bundle is over ${MAX_MIB} MiB: the device tool carries 64 MiB in all, working tree included"
log "ok; on the GPU machine: bash gpu/check.sh (carry [\"target/gpu-bundle\"])"
