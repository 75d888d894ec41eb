#!/bin/sh
# Installs the Debian 12 packages fluxcgi needs, skipping those already present.
# Used by `make deps` and by the container images, so CI exercises the same steps.
# Usage: tools/deps.sh [--print]   (--print lists the packages and exits)
set -eu

PKGS="build-essential pkg-config ca-certificates
python3 python3-torch python3-numpy python3-regex python3-sentencepiece python3-pil
sentencepiece libsentencepiece-dev
libtorch-dev libfcgi-dev libjson-c-dev libpng-dev libsqlite3-dev sqlite3 libutf8proc-dev
clang-format
nginx-light lighttpd curl spawn-fcgi
wrk python3-fastapi python3-uvicorn"

if [ "${1:-}" = "--print" ]; then
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
