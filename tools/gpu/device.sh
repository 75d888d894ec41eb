#!/bin/bash
# The GPU run, in one call on the device machine (tools/gpu/prepare.sh ran here first):
#   1. unpack the carried Debian packages into a private prefix (never over /);
#   2. build the C side against that machine's pip PyTorch (TORCH_DIR, its C++ ABI,
#      libtorch_cuda linked with --no-as-needed);
#   3. tiny model: CUDA bf16 against CPU fp32 (same bf16 noise), latents and pixels;
#   4. real FLUX.1 dims with random weights (fluxexport random-model): 28 steps at
#      1024x1024 through fluxgen, through the same TorchScript module from Python, and
#      through the eager module; peak GPU memory; load time of each module.
# Output: $OUT/gpu-run.txt (everything), $OUT/results.txt (the numbers).
#
# Options (environment): DEPTH / SINGLE (blocks of the big transformer, default 19 / 38),
# STEPS (28), SIZE (1024), SMOKE=1 (CPU-only rehearsal with tiny dims, for checking the
# script on a machine without a GPU), PY (python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/fluxgpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-run.txt") 2>&1
PY=${PY:-python3}
SMOKE=${SMOKE:-}
DEPTH=${DEPTH:-19}
SINGLE=${SINGLE:-38}
STEPS=${STEPS:-28}
SIZE=${SIZE:-1024}
WORK=${WORK:-/tmp/fluxgpu}
BUILD=$WORK/build
DEV=cuda
DT=bf16
DIMS=full
if [ -n "$SMOKE" ]; then
    DEV=cpu DT=fp32 DIMS=tiny STEPS=${STEPS_SMOKE:-2} SIZE=${SIZE_SMOKE:-256}
fi
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
mkdir -p "$WORK"

stamp "1. packages -> $WORK/prefix"
P=$WORK/prefix
rm -rf "$P" && mkdir -p "$P"
for f in .gpu/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
        dpkg-deb -x "$f" "$P"
    else
        (cd "$P" && ar p "$OLDPWD/$f" "$(ar t "$OLDPWD/$f" | grep '^data.tar')" | tar -x --xz 2>/dev/null \
            || ar p "$OLDPWD/$f" "$(ar t "$OLDPWD/$f" | grep '^data.tar')" | tar -x --zstd)
    fi
done
LIBDIR=$P/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

stamp "2. build against $PY's torch"
TORCH_DIR=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')
TORCH_ABI=$($PY -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader || true
make -j"$(nproc)" c BUILD="$BUILD" NO_DEPS=1 TORCH_DIR="$TORCH_DIR" TORCH_ABI="$TORCH_ABI" \
    C_DEPS_CFLAGS="-isystem $P/usr/include -isystem $P/usr/include/json-c -isystem $P/usr/include/libpng16" \
    C_DEPS_LIBS="-L$LIBDIR -Wl,-rpath,$LIBDIR -ljson-c -lutf8proc -lpng16 -lm -ldl -pthread" \
    PLUGIN_T5_LIBS="-L$LIBDIR -Wl,-rpath,$LIBDIR -lutf8proc -lsentencepiece"
FLUXGEN=$BUILD/fluxgen
export PYTHONPATH=$PWD/export

stamp "3. tiny model: $DEV $DT against cpu fp32"
$PY -m fluxexport export --source build/tiny-src/bfl -o "$WORK/tiny-fp32" --force --quiet \
    --device cpu --dtype fp32 --name flux-tiny
$PY -m fluxexport export --source build/tiny-src/bfl -o "$WORK/tiny-$DT" --force --quiet \
    --device "$DEV" --dtype "$DT" --name flux-tiny
rm -rf "$WORK/lat-ref" "$WORK/lat-dev" && mkdir -p "$WORK/lat-ref" "$WORK/lat-dev"
PROMPT="a small red fox in the snow, watercolor"
$FLUXGEN --model "$WORK/tiny-$DT" --device "$DEV" --prompt "$PROMPT" --steps 4 --width 256 \
    --height 256 --seed 7 --json --dump-latents "$WORK/lat-dev" -o "$WORK/tiny-dev.png"
$PY tools/gpu/bench_gpu.py parity --fluxgen "$FLUXGEN" --model32 "$WORK/tiny-fp32" \
    --prompt "$PROMPT" --steps 4 --size 256 --seed 7 --dev-latents "$WORK/lat-dev" \
    --dev-png "$WORK/tiny-dev.png" --dtype "$DT" --results "$OUT/results.txt"

stamp "4. random $DIMS model ($DEPTH + $SINGLE blocks), $DEV $DT"
rm -rf "$WORK/big"
s=$(date +%s)
$PY -m fluxexport random-model --out "$WORK/big" --tokenizers build/models/tiny \
    --dims "$DIMS" --depth "$DEPTH" --single "$SINGLE" --device "$DEV" --dtype "$DT" --quiet
stamp "random model written in $(( $(date +%s) - s )) s"
du -sh "$WORK/big"
$FLUXGEN --model "$WORK/big" --device "$DEV" --prompt "a red fox" --steps "$STEPS" \
    --width "$SIZE" --height "$SIZE" --seed 1 --count 2 --json -o "$WORK/big-%d.png" \
    > "$WORK/fluxgen-big.jsonl"
cat "$WORK/fluxgen-big.jsonl"
$PY tools/gpu/bench_gpu.py speed --model "$WORK/big" --device "$DEV" --steps "$STEPS" \
    --size "$SIZE" --depth "$DEPTH" --single "$SINGLE" --dims "$DIMS" \
    --fluxgen-json "$WORK/fluxgen-big.jsonl" --results "$OUT/results.txt" \
    --commit "$(cat .gpu/commit 2>/dev/null || echo unknown)"
stamp "done"
cat "$OUT/results.txt"
