#!/bin/sh
# Prepares a GPU run on a machine with apt (this one): downloads the Debian 12 packages that
# the C build needs into .gpu/debs, builds the tiny checkpoints, and records the commit.
# Everything goes into git-ignored paths that the device calls carry (25 MB):
#   carry: [".gpu", "build/tiny-src", "build/models/tiny"]
# Then, there, one call per stage: tools/gpu/device.sh smoke, then tools/gpu/device.sh full
# (docs/operations.md, "GPU runs").  Commit first: .gpu/commit names what was measured.
set -eu
cd "$(dirname "$0")/../.."

PKGS="libjson-c5 libjson-c-dev libutf8proc2 libutf8proc-dev libpng16-16 libpng-dev zlib1g
zlib1g-dev libsentencepiece0 libsentencepiece-dev libsqlite3-0 libsqlite3-dev"

rm -rf .gpu/debs
mkdir -p .gpu/debs
(cd .gpu/debs && apt-get download $PKGS >/dev/null)
git rev-parse HEAD > .gpu/commit 2>/dev/null || echo unknown > .gpu/commit
if ! git diff --quiet HEAD 2>/dev/null; then
    echo "$(cat .gpu/commit)+uncommitted" > .gpu/commit
fi
make tiny-model >/dev/null
echo "prepared: $(ls .gpu/debs | wc -l) packages, commit $(cat .gpu/commit)"
du -sh .gpu build/tiny-src build/models/tiny | sed 's/^/  /'
