#!/usr/bin/env bash
# The one script to run ON the GPU machine, from the repo root, with the
# bundle from gpu/build.sh at target/gpu-bundle (bundle.tar.xz + BUILD.txt;
# BUNDLE=DIR overrides; loose binaries fused/deep/softmax/xtask in DIR also work):
#
#   bash gpu/check.sh            # device tool: carry ["target/gpu-bundle"], timeout_s ~480
#
# Writes to $OUT (default target/gpu-check), at most 8 files:
#   check.log                    everything (tee)
#   system.txt                   nvidia-smi, nvcc, uname, chosen libraries, ldd
#   summary.txt                  step status + criterion 'time:' lines
#   compare-cuda/summary.json    xtask compare, Newton-CG on the L2 problem (CUDA, f64)
#   compare-cuda/report.md
#   autoencoder-cuda/summary.json  xtask compare, HF and Adam on the deep autoencoder (CUDA, f32)
#   autoencoder-cuda/report.md
#
# Env: OUT, BUNDLE, CHECK_BUDGET_S (default 460), CHECK_LIB_DIRS (extra
# library folders to search first, colon-separated).
#
# Steps (each under `timeout`, a failure does not stop the others; the whole
# run keeps within CHECK_BUDGET_S, default 460 s, so that it ends before the
# device tool's limit):
#   a. fused test fused_ops_on_cuda* (CUDA kernels vs the unfused candle path),
#      with the default block count, then with 1 and 3 blocks; deep test
#      deep_models_on_cuda_match_cpu (the deep models' loss, gradient,
#      Gauss-Newton and Hessian products on CUDA against the CPU)
#   b. criterion cuda/softmax benches
#   c. HESSFREE_CUDA_BLOCKS sweep of cuda/softmax/hvp/f32/n60000/fused-u8
#   d. xtask compare --device cuda (Newton-CG, softmax+bias, l2 1e-4, f64)
#   e. xtask compare --device cuda on the deep autoencoder of
#      docs/reports/deep-autoencoder: HF and Adam (lr 1e-3), 45 s each, f32
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT" || exit 1
OUT=${OUT:-$ROOT/target/gpu-check}
mkdir -p "$OUT" || { echo "check.sh: error: cannot create OUT=$OUT" >&2; exit 1; }
OUT=$(cd "$OUT" && pwd -P)
B=${BUNDLE:-$ROOT/target/gpu-bundle}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/hessfree-gpu-check.XXXXXX")
BUDGET=${CHECK_BUDGET_S:-460}
# The binaries gpu/build.sh bundles.
BINARIES=(fused deep softmax xtask)
SYS=$OUT/system.txt
SUMMARY=$OUT/summary.txt

log() { echo "check.sh: $*"; }
hdr() { printf '\n==================== %s ====================\n' "$*"; }

# remaining seconds of the overall budget
remaining() { echo $((BUDGET - SECONDS)); }

# step NAME MAX_S RESERVE_S cmd...: run cmd under timeout min(MAX_S,
# remaining - RESERVE_S) (RESERVE_S is kept for the later steps); record the
# outcome in summary.txt. Never fails the script.
step() {
  local name=$1 max=$2 reserve=$3; shift 3
  local t rc t0
  t=$(( $(remaining) - reserve ))
  (( t > max )) && t=$max
  hdr "$name"
  if (( t < 10 )); then
    log "SKIPPED $name: out of time budget ($(remaining) s left of $BUDGET)"
    echo "SKIP  $name (no time left)" >> "$SUMMARY"
    return 0
  fi
  log "running (timeout ${t}s): $*"
  t0=$SECONDS
  timeout -k 10 "$t" "$@"
  rc=$?
  local took=$((SECONDS - t0))
  if (( rc == 0 )); then
    echo "OK    $name (${took}s)" >> "$SUMMARY"
  elif (( rc == 124 || rc == 137 )); then
    echo "TIME  $name: timed out after ${took}s (limit ${t}s)" >> "$SUMMARY"
    log "TIMED OUT: $name after ${took}s"
  else
    echo "FAIL  $name: exit $rc (${took}s)" >> "$SUMMARY"
    log "FAILED: $name (exit $rc)"
  fi
  return 0
}

# keep_summary DIR: keep only a compare run's summary.json and report.md (the
# device tool returns at most 8 files) and print the runs' headline numbers.
keep_summary() {
  local dir=$1
  [[ -d $dir ]] || return 0
  find "$dir" -mindepth 1 -maxdepth 1 ! -name summary.json ! -name report.md -exec rm -rf {} +
  ls -l "$dir"
  if [[ -f $dir/summary.json ]] && command -v python3 >/dev/null; then
    python3 - "$dir/summary.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
print("device:", d.get("device"), "dtype:", d.get("dtype"), "problem:", d.get("problem"))
for r in d.get("runs", []):
    print({k: r.get(k) for k in ("name", "stop_reason", "iterations", "wall_seconds",
                                 "final_objective", "final_grad_norm", "test_accuracy",
                                 "train_error", "test_error", "data_passes",
                                 "hvp_evals", "peak_memory_bytes")})
PY
  fi
}

# --- the CUDA libraries --------------------------------------------------------
# The binaries need libcuda.so.1 (driver) plus libnvrtc.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libcudart.so.13. The image has them in
# /usr/local/cuda*/lib64 and/or in pip wheels (site-packages/nvidia/*/lib,
# nvidia/cu13/lib). NVRTC matters most: the fused kernels are compiled at run
# time, and PTX from an NVRTC newer than the driver is rejected
# (CUDA_ERROR_UNSUPPORTED_PTX_VERSION); so the NVRTC picked is the newest one
# not newer than the driver's CUDA version. The chosen files are symlinked
# into one folder that goes first on LD_LIBRARY_PATH.
NEEDED_LIBS=(libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13)

lib_dirs() { # candidate folders, most preferred first
  local d sp
  # CHECK_LIB_DIRS: extra folders (colon-separated), searched first
  if [[ -n ${CHECK_LIB_DIRS:-} ]]; then tr ':' '\n' <<<"$CHECK_LIB_DIRS"; fi
  for d in /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-13* /usr/local/cuda*; do
    [[ -d $d ]] || continue
    for sub in lib64 targets/x86_64-linux/lib lib; do
      [[ -d $d/$sub ]] && echo "$d/$sub"
    done
  done
  {
    if command -v python3 >/dev/null; then
      python3 - <<'PY' 2>/dev/null
import site, sys
for p in site.getsitepackages() + [site.getusersitepackages()]:
    print(p)
PY
    fi
    ls -d /usr/local/lib/python3*/dist-packages /usr/local/lib/python3*/site-packages \
          /usr/lib/python3*/dist-packages /opt/conda/lib/python3*/site-packages \
          /root/.local/lib/python3*/site-packages 2>/dev/null
  } | awk '!seen[$0]++' | while read -r sp; do
    [[ -d $sp/nvidia ]] || continue
    find "$sp/nvidia" -mindepth 2 -maxdepth 3 -type d -name lib 2>/dev/null | sort
  done
  # what the dynamic loader already knows
  if command -v ldconfig >/dev/null; then
    ldconfig -p 2>/dev/null | awk '/lib(nvrtc|cublas|cublasLt|curand|cudart)\.so\.[0-9]+ /{print $NF}' \
      | xargs -r -n1 dirname
  fi
}

# nvrtc version of the libnvrtc.so.13 in folder $1, from its builtins' name
nvrtc_version() {
  local f
  for f in "$1"/libnvrtc-builtins.so.[0-9]*.[0-9]*; do
    [[ -e $f ]] && { echo "${f##*libnvrtc-builtins.so.}"; return 0; }
  done
  return 0
}

ver_le() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1) == "$1" ]]; }

setup_libs() {
  local libdir=$SCRATCH/lib dirs d lib v best bestv
  mkdir -p "$libdir"
  mapfile -t dirs < <(lib_dirs | awk '!seen[$0]++')
  echo "library folders searched (preference order):"
  if (( ${#dirs[@]} )); then printf '  %s\n' "${dirs[@]}"; else echo "  (none found)"; fi
  echo "driver CUDA version: $DRIVER_CUDA"
  # NVRTC: newest not newer than the driver
  best="" bestv=""
  for d in "${dirs[@]}"; do
    [[ -e $d/libnvrtc.so.13 ]] || continue
    v=$(nvrtc_version "$d")
    echo "  libnvrtc.so.13 in $d: version ${v:-unknown}"
    [[ -n $v ]] || continue
    if ver_le "$v" "$DRIVER_CUDA" && { [[ -z $bestv ]] || ! ver_le "$v" "$bestv"; }; then
      best=$d bestv=$v
    fi
  done
  if [[ -z $best ]]; then
    for d in "${dirs[@]}"; do
      [[ -e $d/libnvrtc.so.13 ]] && { best=$d; bestv=$(nvrtc_version "$d"); break; }
    done
    [[ -n $best ]] && echo "WARNING: no NVRTC <= driver CUDA $DRIVER_CUDA; using $best (${bestv:-?}): the fused kernels will likely fail with CUDA_ERROR_UNSUPPORTED_PTX_VERSION"
  fi
  if [[ -n $best ]]; then
    ln -sf "$best/libnvrtc.so.13" "$libdir/"
    for f in "$best"/libnvrtc-builtins*.so.*; do [[ -e $f ]] && ln -sf "$f" "$libdir/"; done
    echo "chosen: libnvrtc.so.13 -> $best (NVRTC $bestv)"
  else
    echo "NOT FOUND: libnvrtc.so.13 in any searched folder"
  fi
  # the others: the first folder that has them (cuBLAS and cuBLASLt together)
  for lib in "${NEEDED_LIBS[@]}"; do
    [[ $lib == libnvrtc.so.13 || $lib == libcublasLt.so.13 ]] && continue
    best=""
    for d in "${dirs[@]}"; do
      if [[ -e $d/$lib ]] && { [[ $lib != libcublas.so.13 ]] || [[ -e $d/libcublasLt.so.13 ]]; }; then
        best=$d; break
      fi
    done
    if [[ -n $best ]]; then
      ln -sf "$best/$lib" "$libdir/"
      [[ $lib == libcublas.so.13 ]] && ln -sf "$best/libcublasLt.so.13" "$libdir/"
      echo "chosen: $lib -> $best"
    else
      echo "NOT FOUND: $lib in any searched folder"
    fi
  done
  export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

main() {
  hdr "hessfree GPU check  $(date -u +%FT%TZ)"
  log "repo $ROOT; bundle $B; OUT $OUT; budget ${BUDGET}s"
  : > "$SUMMARY"

  # --- system ----------------------------------------------------------------
  {
    hdr "uname -a"; uname -a
    ldd --version 2>&1 | head -1   # the binaries need glibc >= 2.34
    hdr "nvidia-smi"
    if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1; else echo "nvidia-smi: not on PATH"; fi
    hdr "nvcc --version"
    if command -v nvcc >/dev/null; then nvcc --version 2>&1
    elif [[ -x /usr/local/cuda/bin/nvcc ]]; then /usr/local/cuda/bin/nvcc --version 2>&1
    else echo "nvcc: not found"; fi
    hdr "bundle"
    if [[ -f $B/BUILD.txt ]]; then cat "$B/BUILD.txt"; fi
    ls -l "$B" 2>&1
  } > "$SYS" 2>&1
  cat "$SYS"

  DRIVER_CUDA=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)
  if [[ -z $DRIVER_CUDA ]]; then
    DRIVER_CUDA=13.0
    log "WARNING: could not read the driver's CUDA version from nvidia-smi; assuming $DRIVER_CUDA"
  fi

  # The bundle: bundle.tar.xz (from gpu/build.sh) unpacked into scratch, or
  # loose binaries in $B.
  BIN=$B
  if [[ -f $B/bundle.tar.xz ]]; then
    BIN=$SCRATCH/bin
    mkdir -p "$BIN"
    log "unpacking $B/bundle.tar.xz into $BIN"
    if command -v xz >/dev/null; then
      xz -dc "$B/bundle.tar.xz" | tar -C "$BIN" -xf -
    else
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
        "$B/bundle.tar.xz" "$BIN"
    fi || log "ERROR: unpacking $B/bundle.tar.xz failed"
    if [[ -f $B/BUILD.txt ]] && command -v sha256sum >/dev/null; then
      if (cd "$BIN" && grep -E '^[0-9a-f]{64}  ' "$B/BUILD.txt" | sha256sum -c --quiet -); then
        log "sha256 of the unpacked binaries match BUILD.txt"
      else
        log "ERROR: the unpacked binaries do not match BUILD.txt's sha256 (truncated carry?)"
      fi
    fi
  fi
  local missing=0 f
  for f in "${BINARIES[@]}"; do
    if [[ ! -x $BIN/$f ]]; then
      log "ERROR: $BIN/$f is missing: build it with gpu/build.sh and carry target/gpu-bundle"
      missing=1
    fi
  done
  if (( missing )); then
    echo "FAIL  bundle incomplete: run gpu/build.sh, then carry [\"target/gpu-bundle\"]" >> "$SUMMARY"
    cat "$SUMMARY"
    return 1
  fi

  { hdr "CUDA libraries"; setup_libs; } 2>&1 | tee -a "$SYS"
  # setup_libs ran in a pipeline (subshell): redo the export here
  LD_LIBRARY_PATH=$SCRATCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH

  local bad=0 out
  {
    for f in "${BINARIES[@]}"; do
      hdr "ldd $f"
      out=$(ldd "$BIN/$f" 2>&1)
      echo "$out"
      if grep -q 'not found' <<<"$out"; then
        echo "!!! $f: unresolved libraries:"; grep 'not found' <<<"$out"
      fi
      if grep -q 'libcuda.so.1 .*stubs' <<<"$out"; then
        echo "!!! $f: libcuda.so.1 resolves to a link stub; the driver's libcuda.so.1 must come first"
      fi
    done
  } 2>&1 | tee -a "$SYS"
  for f in "${BINARIES[@]}"; do
    if ldd "$BIN/$f" 2>&1 | grep -q 'not found'; then bad=1; fi
  done
  if ldd "$BIN/xtask" 2>&1 | grep -q 'libcuda.so.1 => not found'; then
    log "ERROR: libcuda.so.1 (installed by the NVIDIA driver, not the toolkit) is not found: no usable driver here"
  fi
  if (( bad )); then
    echo "WARN  some libraries are 'not found' (see system.txt); the steps below will likely fail" >> "$SUMMARY"
    log "WARNING: unresolved libraries (see above); running the steps anyway"
  fi

  export HESSFREE_DATA=$ROOT/data/mnist
  export RUST_BACKTRACE=1
  export CRITERION_HOME=$SCRATCH/criterion   # keep criterion's files out of $OUT
  log "HESSFREE_DATA=$HESSFREE_DATA"

  # a. correctness of the CUDA kernels (~seconds each): with the default
  #    block count every block gets one tile of the test's small batches, so
  #    1 and 3 blocks also run the tile loop and uneven partitions.
  step "a. fused test fused_ops_on_cuda" 90 360 \
    "$BIN/fused" fused_ops_on_cuda --nocapture
  local tb
  for tb in 1 3; do
    step "a. fused test fused_ops_on_cuda HESSFREE_CUDA_BLOCKS=$tb" 60 350 \
      env HESSFREE_CUDA_BLOCKS="$tb" "$BIN/fused" fused_ops_on_cuda
  done
  step "a. deep test deep_models_on_cuda_match_cpu" 60 320 \
    "$BIN/deep" deep_models_on_cuda_match_cpu --nocapture

  # b. all cuda/softmax benches (24, about 4 s each)
  step "b. bench cuda/softmax" 180 270 \
    "$BIN/softmax" --bench 'cuda/softmax' --warm-up-time 1 --measurement-time 2

  # c. block-count sweep on the fused u8 HVP
  local blocks
  for blocks in 132 264 528 1056; do
    echo "HESSFREE_CUDA_BLOCKS=$blocks"
    step "c. bench hvp/f32/n60000/fused-u8 HESSFREE_CUDA_BLOCKS=$blocks" 45 220 \
      env HESSFREE_CUDA_BLOCKS="$blocks" \
      "$BIN/softmax" --bench 'cuda/softmax/hvp/f32/n60000/fused-u8' --warm-up-time 1 --measurement-time 2
  done

  # d. Newton-CG on the L2 problem on CUDA: softmax with bias (--model softmax),
  #    lam 1e-4, f64, all 60000 training images; tolerance and iteration cap
  #    as in docs/reports/newton-vs-sgd-l2 so the numbers compare with it.
  local cmp=$OUT/compare-cuda
  rm -rf "$cmp"
  step "d. xtask compare --device cuda newton-cg" 180 125 \
    "$BIN/xtask" compare --device cuda --dtype f64 --optimizers newton-cg \
      --model softmax --l2 1e-4 --grad-tol 1e-8 --max-iters 500 --max-time 120 \
      --title "Newton-CG on CUDA: L2-regularised softmax regression (lam = 1e-4, f64)" \
      --out "$cmp"
  keep_summary "$cmp"

  # e. The deep autoencoder of docs/reports/deep-autoencoder (784-400-200-
  #    100-50-25-6 mirrored, sparse init, l2 1e-5, f32) on CUDA: HF and Adam
  #    at its best grid point (lr 1e-3), 45 s each. Short, so it compares
  #    with the report's curves at 45 s, not with their final values.
  local ae=$OUT/autoencoder-cuda
  rm -rf "$ae"
  step "e. xtask compare --device cuda deep autoencoder" 150 5 \
    "$BIN/xtask" compare --device cuda --dtype f32 \
      --optimizers 'hf,adam@lr=1e-3;trace_every=50' \
      --model autoencoder:400,200,100,50,25,6 --init sparse --l2 1e-5 --curvature ggn \
      --grad-tol 0 --max-iters 100000 --sgd-steps 100000000 --sgd-eval-every 500 \
      --sgd-batch 100 --max-time 45 \
      --title "Deep autoencoder on CUDA: HF and Adam, 45 s each (f32)" \
      --out "$ae"
  keep_summary "$ae"

  # --- summary -----------------------------------------------------------------
  hdr "summary"
  {
    echo "total ${SECONDS}s of budget ${BUDGET}s"
    echo
    echo "criterion time: lines (benchmark id, [low estimate high]):"
  } >> "$SUMMARY"
  # criterion prints the id, then (for long ids on the next line) 'time: [...]';
  # the sweep's HESSFREE_CUDA_BLOCKS=... lines label the step c results.
  awk '
    /^==================== / { sect = $0; sub(/^=+ /, "", sect); sub(/ =+$/, "", sect) }
    /^HESSFREE_CUDA_BLOCKS=/ { blocks = $0 }
    /^(cpu|cuda)\/softmax\// { id = $1 }
    /time:/ && !/%/ {   # "%": the time: line of a "change:" block
      t = $0; sub(/.*time:[ \t]*/, "", t)
      tag = (sect ~ /^c\./) ? " (" blocks ")" : ""
      printf "%-45s %s%s\n", id, t, tag
    }' "$OUT/check.log" > "$SCRATCH/times.txt"
  cat "$SCRATCH/times.txt" >> "$SUMMARY"
  # the bench skips (exit 0) when it cannot open the device: catch that here
  if ! grep -q '^cuda/softmax/' "$SCRATCH/times.txt"; then
    echo "FAIL  no cuda/softmax benchmark produced a time (look for 'skipping the CUDA benches' in check.log)" >> "$SUMMARY"
  fi
  cat "$SUMMARY"
  ! grep -qE '^(FAIL|TIME)' "$SUMMARY"
}

# Everything goes to the terminal and to $OUT/check.log.
: > "$OUT/check.log"
main "$@" 2>&1 | tee -a "$OUT/check.log"
rc=${PIPESTATUS[0]}
rm -rf "$SCRATCH"
echo "check.sh: done (exit $rc); results in $OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
exit "$rc"
