#!/bin/sh
# Headers for compiling the CUDA side of the shim on a Debian machine without CUDA
# (make check-cuda-compile):
#   DIR/cuda/usr/include   the CUDA runtime headers of Debian's nvidia-cuda-dev (non-free),
#                          fetched with apt-get download under a private apt state in DIR
#                          and unpacked with dpkg-deb: nothing is installed, the system's
#                          apt sources are left as they are;
#   DIR/c10/c10/cuda/impl/cuda_cmake_macros.h
#                          the one c10 header that a CUDA build of PyTorch generates and
#                          Debian's CPU libtorch-dev lacks.
# Usage: tools/gpu/cuda-headers.sh DIR   (does nothing when DIR/.stamp exists)
# Needs network access to deb.debian.org (the 770 MB package is removed once unpacked).
set -eu
DIR=${1:?usage: cuda-headers.sh DIR}
[ -e "$DIR/.stamp" ] && exit 0
mkdir -p "$DIR/apt/lists/partial" "$DIR/apt/archives/partial"
DIR=$(cd "$DIR" && pwd)
. /etc/os-release
SUITE=${VERSION_CODENAME:-bookworm}
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE non-free" \
    > "$DIR/apt/sources.list"
APT="-o Dir::Etc::sourcelist=$DIR/apt/sources.list -o Dir::Etc::sourceparts=-
     -o Dir::State::Lists=$DIR/apt/lists -o Dir::Cache::archives=$DIR/apt/archives
     -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Get::List-Cleanup=0"
echo "  FETCH   nvidia-cuda-dev ($SUITE non-free) into $DIR"
# shellcheck disable=SC2086
if ! apt-get $APT update >"$DIR/apt.log" 2>&1 ||
    ! (cd "$DIR/apt" && apt-get $APT download nvidia-cuda-dev >>"$DIR/apt.log" 2>&1); then
    tail -n 5 "$DIR/apt.log" >&2
    echo "cuda-headers.sh: cannot fetch nvidia-cuda-dev from Debian non-free (log: $DIR/apt.log)" >&2
    exit 1
fi
rm -rf "$DIR/cuda" && mkdir -p "$DIR/cuda"
dpkg-deb --fsys-tarfile "$DIR"/apt/nvidia-cuda-dev_*.deb | tar -x -C "$DIR/cuda" --wildcards './usr/include/*'
ls "$DIR"/apt/nvidia-cuda-dev_*.deb | sed 's|.*/||' > "$DIR/cuda/version"
rm -f "$DIR"/apt/nvidia-cuda-dev_*.deb
test -f "$DIR/cuda/usr/include/cuda_runtime_api.h"
mkdir -p "$DIR/c10/c10/cuda/impl"
cat > "$DIR/c10/c10/cuda/impl/cuda_cmake_macros.h" <<'EOF'
#pragma once
// what a CUDA build of PyTorch generates from cuda_cmake_macros.h.in (shared c10_cuda)
#define C10_CUDA_BUILD_SHARED_LIBS
EOF
touch "$DIR/.stamp"
echo "  CUDA    headers of $(cat "$DIR/cuda/version") in $DIR/cuda/usr/include"
