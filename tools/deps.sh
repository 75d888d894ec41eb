#!/bin/sh
# Installs the Debian 12 packages fluxcgi needs, skipping those already present.
# Used by `make deps` (profile all) and by the container images (docker/), so CI runs the
# same script that builds the images.
#
# Usage: tools/deps.sh [--print] [--profile all|cpu-image|cuda-image|web-image|monitoring-image]
#   all         everything: build, run, export, tests, benchmarks (make deps)
#   cpu-image   build and run on the CPU with Debian's libtorch, export the tiny model
#   cuda-image  build and run with a pip PyTorch (installed by the image itself)
#   web-image   the nginx front end
#   monitoring-image  Prometheus (docker/compose.yml, profile monitoring)
#   --print     lists the packages of the profile and exits
set -eu

BUILD="build-essential pkg-config ca-certificates make
libjson-c-dev libpng-dev libsqlite3-dev sqlite3 libutf8proc-dev libsentencepiece-dev
libturbojpeg0-dev libwebp-dev libssl-dev libcurl4-openssl-dev"
PYTHON="python3 python3-numpy python3-pil"
DEBIAN_TORCH="python3-torch libtorch-dev"
TOKENIZERS="sentencepiece python3-sentencepiece python3-regex"
WEB="nginx-light lighttpd curl spawn-fcgi"
TESTS="clang-format wrk python3-fastapi python3-uvicorn systemd clang libclang-rt-14-dev chromium"
MONITORING="prometheus"

profile=all
print=0
while [ $# -gt 0 ]; do
    case "$1" in
        --print) print=1; shift ;;
        --profile) profile=${2:-}; shift 2 ;;
        *) echo "deps: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
case "$profile" in
    all) PKGS="$BUILD $PYTHON $DEBIAN_TORCH $TOKENIZERS $WEB $TESTS $MONITORING" ;;
    cpu-image) PKGS="$BUILD $PYTHON $DEBIAN_TORCH $TOKENIZERS curl" ;;
    cuda-image) PKGS="$BUILD $PYTHON $TOKENIZERS python3-venv python3-pip curl" ;;
    web-image) PKGS="nginx-light curl" ;;
    monitoring-image) PKGS="$MONITORING" ;;
    *) echo "deps: unknown profile '$profile'" >&2; exit 2 ;;
esac

if [ "$print" = 1 ]; then
    echo $PKGS
    exit 0
fi

missing=""
for p in $PKGS; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done

[ -z "$missing" ] && exit 0

echo "deps: installing:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "deps: missing packages:$missing; run as root: apt-get install$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
