#!/usr/bin/env bash
# Assemble a CUDA 13.0 toolkit from PyPI wheels, enough to build hessfree with
# `--features cuda` on a machine with no GPU and no system CUDA.
#
#   bash gpu/toolkit.sh DIR        # e.g. /tmp/cuda13
#   source DIR/env.sh              # then gpu/build.sh
#
# Why 13.0 exactly: the GPU machines run driver 580.x (CUDA 13.0). candle-kernels
# embeds PTX produced by the build's nvcc, and a 13.0 driver's JIT rejects PTX
# from a newer nvcc (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). cudarc is pinned to
# 13000 (CUDARC_CUDA_VERSION) so the binaries reference only 13.0 driver symbols.
#
# Layout of DIR (idempotent: rerunning checks and repairs, reinstalls only when
# the pinned versions change or the install is incomplete):
#   DIR/pkg/            pip --target folder (wheels unpack to pkg/nvidia/cu13/...)
#   DIR/{bin,include,lib,nvvm} -> pkg/nvidia/cu13/...;  DIR/lib64 -> lib
#   DIR/lib/stubs/libcuda.so   link-only stub (SONAME libcuda.so.1); every entry
#                              returns 34 (CUDA_ERROR_STUB_LIBRARY). Never put
#                              lib/stubs on LD_LIBRARY_PATH.
#   DIR/env.sh                 environment for building
#
# Environment knobs:
#   PYTHON=python3            interpreter whose pip is used
#   TOOLKIT_WHEELS=DIR        install offline from wheels in DIR (--no-index --find-links)
#   CUDARC_SRC=DIR            cudarc 0.19.10 sources (default: the cargo registry copy)
#   CC=cc                     C compiler for the stub
set -euo pipefail

die() { echo "toolkit.sh: error: $*" >&2; exit 1; }
log() { echo "toolkit.sh: $*" >&2; }

[[ $# -eq 1 && -n "$1" ]] || die "usage: bash gpu/toolkit.sh DIR   (e.g. /tmp/cuda13)"

# CUDA 13.0 Update 2 component versions (all CUDA 13.0.x; newer ones would
# emit PTX a 13.0 driver cannot load, or need a newer driver).
PKGS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
)
CUDA_RELEASE=13.0
CUDARC_VERSION=0.19.10

PYTHON=${PYTHON:-python3}
CC=${CC:-cc}
command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH (set PYTHON=...)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work"
command -v "$CC" >/dev/null || die "no C compiler '$CC' (needed for the libcuda stub; set CC=...)"

mkdir -p "$1" || die "cannot create $1"
DIR=$(cd "$1" && pwd -P)
PKG=$DIR/pkg
CU=$PKG/nvidia/cu13

# --- 1. the wheels ----------------------------------------------------------
# The installed set is recorded in pkg/.pins; any difference means reinstall.
want_pins=$(printf '%s\n' "${PKGS[@]}")
have_pins=""
[[ -f $PKG/.pins ]] && have_pins=$(cat "$PKG/.pins")
if [[ $have_pins == "$want_pins" && -x $CU/bin/nvcc ]]; then
  log "wheels already installed in $PKG (pins match); skipping pip"
else
  # pip --target into an existing folder refuses to overwrite, and with
  # --upgrade it replaces whole top-level folders (nvidia/), wiping the other
  # packages already there. So: install everything in ONE pip call into a
  # fresh folder, then swap it in.
  tmp=$DIR/pkg.new
  rm -rf "$tmp"
  src_args=()
  if [[ -n ${TOOLKIT_WHEELS:-} ]]; then
    [[ -d $TOOLKIT_WHEELS ]] || die "TOOLKIT_WHEELS=$TOOLKIT_WHEELS is not a folder"
    src_args=(--no-index --find-links "$TOOLKIT_WHEELS")
  fi
  log "pip installing ${#PKGS[@]} wheels into $tmp (about 1.5 GB unpacked)"
  "$PYTHON" -m pip install --disable-pip-version-check --no-deps --no-compile \
      --only-binary=:all: --target "$tmp" "${src_args[@]}" "${PKGS[@]}" \
    || die "pip install failed (network? versions gone? for offline use set TOOLKIT_WHEELS=DIR of .whl files)"
  [[ -x $tmp/nvidia/cu13/bin/nvcc ]] \
    || die "pip finished but $tmp/nvidia/cu13/bin/nvcc is missing: the wheel layout changed"
  printf '%s\n' "${PKGS[@]}" > "$tmp/.pins"
  rm -rf "$PKG"
  mv "$tmp" "$PKG"
fi

# --- 2. symlink layout -------------------------------------------------------
for d in bin include lib nvvm; do
  [[ -d $CU/$d ]] || die "$CU/$d is missing (incomplete install? delete $PKG and rerun)"
  ln -sfn "pkg/nvidia/cu13/$d" "$DIR/$d"
done
ln -sfn lib "$DIR/lib64"
[[ -f $DIR/include/cccl/cub/cub.cuh || -f $DIR/include/cub/cub.cuh ]] \
  || die "CCCL headers (cub/thrust) missing under $DIR/include"

# --- 3. unversioned .so links (what `-lfoo` looks for) -----------------------
link_unversioned() { # NAME SONAME
  local lib=$DIR/lib
  [[ -e $lib/$2 ]] || die "$lib/$2 is missing (wrong wheel version?)"
  ln -sfn "$2" "$lib/$1"
}
link_unversioned libcudart.so   libcudart.so.13
link_unversioned libnvrtc.so    libnvrtc.so.13
link_unversioned libcublas.so   libcublas.so.13
link_unversioned libcublasLt.so libcublasLt.so.13
link_unversioned libcurand.so   libcurand.so.10
ls "$DIR"/lib/libnvrtc-builtins.so.${CUDA_RELEASE}* >/dev/null 2>&1 \
  || die "libnvrtc-builtins.so.$CUDA_RELEASE missing: nvrtc wheel is not $CUDA_RELEASE"

# --- 4. libcuda link stub ----------------------------------------------------
# The driver library comes with the driver, not the toolkit; the wheels ship no
# stub. The symbols are every driver entry point cudarc's bindings declare
# (a superset of what the binaries reference, so the link always resolves).
if [[ -z ${CUDARC_SRC:-} ]]; then
  for c in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$CUDARC_VERSION"; do
    [[ -d $c ]] && CUDARC_SRC=$c && break
  done
fi
[[ -n ${CUDARC_SRC:-} ]] \
  || die "cudarc-$CUDARC_VERSION sources not found in the cargo registry; run 'cargo fetch' in the repo first, or set CUDARC_SRC"
[[ -f $CUDARC_SRC/src/driver/sys/mod.rs ]] \
  || die "$CUDARC_SRC/src/driver/sys/mod.rs does not exist (CUDARC_SRC must be cudarc-$CUDARC_VERSION's source folder)"
mkdir -p "$CU/lib/stubs" "$DIR/stubsrc"
stub_c=$DIR/stubsrc/libcuda_stub.c
# (`culib` is cudarc's own loader helper, not a driver entry point.)
syms=$(grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys/mod.rs" \
       | sed 's/^pub unsafe fn //; s/($//' | grep -vx culib | sort -u)
nsyms=$(printf '%s\n' "$syms" | grep -c .) || true
(( nsyms > 300 )) || die "found only $nsyms cu* functions in $CUDARC_SRC/src/driver/sys/mod.rs; cudarc's binding format changed"
{
  echo "/* link-only stub of libcuda (generated by gpu/toolkit.sh from cudarc-$CUDARC_VERSION):"
  echo "   every entry returns CUDA_ERROR_STUB_LIBRARY (34) */"
  printf '%s\n' "$syms" | sed 's/.*/int &(void){return 34;}/'
} > "$stub_c.tmp"
stub=$CU/lib/stubs/libcuda.so
if ! cmp -s "$stub_c.tmp" "$stub_c" || [[ ! -f $stub ]]; then
  mv "$stub_c.tmp" "$stub_c"
  "$CC" -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stub" "$stub_c" \
    || die "compiling the libcuda stub failed"
  log "built libcuda stub with $nsyms symbols"
else
  rm -f "$stub_c.tmp"
fi

# --- 5. env.sh ---------------------------------------------------------------
cat > "$DIR/env.sh" <<EOF
# CUDA $CUDA_RELEASE toolkit assembled from PyPI wheels by gpu/toolkit.sh:
$(printf '#   %s\n' "${PKGS[@]}")
export CUDA_HOME=$DIR
export CUDA_PATH=$DIR
export CUDA_ROOT=$DIR
export CUDA_TOOLKIT_ROOT_DIR=$DIR
export PATH=$DIR/bin:\$PATH
# no GPU here to detect; H100/H200 are sm_90
export CUDA_COMPUTE_CAP=90
# cudarc: bind the CUDA 13.0 driver API only (driver 580.x on the GPU machines)
export CUDARC_CUDA_VERSION=13000
# for the linker (libcublas needs libcublasLt); lib/stubs stays OFF this path
export LD_LIBRARY_PATH=$DIR/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
EOF

# --- 6. check ----------------------------------------------------------------
ver=$("$DIR/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[[ $ver == "$CUDA_RELEASE" ]] || die "nvcc reports release '$ver', expected $CUDA_RELEASE"
log "ok: CUDA $ver toolkit in $DIR ($nsyms stub symbols); now: source $DIR/env.sh"
