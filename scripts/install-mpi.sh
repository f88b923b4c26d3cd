#!/usr/bin/env bash
# Installs what the `mpi` feature builds and runs on: OpenMPI (Debian's
# libopenmpi-dev and openmpi-bin) and libclang-dev, which rsmpi's bindgen
# needs. Does nothing when they are already there; fails loudly when they
# cannot be installed, so that CI never skips the MPI tests silently.
set -euo pipefail

have() {
    command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1 &&
        compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null
}

if have; then
    exit 0
fi

packages=(libopenmpi-dev openmpi-bin libclang-dev)
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: installing ${packages[*]} needs root or sudo" >&2
        exit 1
    fi
    sudo=(sudo)
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no apt-get here; install OpenMPI (mpicc, mpirun) and libclang by hand" >&2
    exit 1
fi
echo "installing ${packages[*]}" >&2
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
if ! have; then
    echo "error: ${packages[*]} installed, but mpirun, mpicc or libclang is still missing" >&2
    exit 1
fi
mpirun --version | head -n 1 >&2
