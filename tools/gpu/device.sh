#!/bin/bash
# The GPU run on the device machine, in stages that each fit well inside one 10-minute call
# (tools/gpu/prepare.sh ran here first; docs/operations.md, "GPU runs", has the calls):
#
#   tools/gpu/device.sh smoke   build against the machine's pip PyTorch; the tiny model in bf16
#                               on CUDA against the CPU fp32 reference; a 2-step run of a 2 + 2
#                               block full-width random model (T5-XXL, CLIP-L, AE) through
#                               fluxgen and through the Python driver.  Target: < 3 minutes.
#   tools/gpu/device.sh full    the random full-size model (19 + 38 blocks): 28 steps at
#                               1024x1024 through fluxgen and through the same TorchScript modules
#                               driven from Python; load time of each module, first image after
#                               load, peak device memory.
#
# Each stage appends its figures to $OUT/results.txt as they are measured and logs everything
# to $OUT/<stage>.log, so a call cut short still brings back what it measured.  Work files
# live in $WORK (default build/gpu, kept between calls while the machine stays warm): the
# build (make is incremental), the tiny models and the random models, each written once in
# the dtype it runs in; full links smoke's T5-XXL, CLIP and AE modules (the same weights)
# and writes only its transformer.  No module is hashed or loaded twice by one program.
#
# Environment: OUT (default /tmp/fluxgpu-out), WORK, PY (python3), SMOKE=1 (rehearsal on a
# machine without a GPU: tiny dimensions, fp32 on the CPU), FLUXGEN (a fluxgen already built:
# no build), STEPS (28), SIZE (1024), DEPTH / SINGLE (blocks of the full stage; results say
# "NOT the full model" when fewer), EAGER=1 (full: the eager transformer as well).
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${1:-}
case "$STAGE" in
smoke | full) ;;
*)
    echo "usage: tools/gpu/device.sh smoke|full   (see the comment at the top)" >&2
    exit 2
    ;;
esac
OUT=${OUT:-/tmp/fluxgpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/$STAGE.log") 2>&1
PY=${PY:-python3}
SMOKE=${SMOKE:-}
WORK=${WORK:-$PWD/build/gpu}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
R=$OUT/results.txt
DEV=cuda DT=bf16 DIMS=full
STEPS=${STEPS:-28} SIZE=${SIZE:-1024} SMALL_SIZE=1024
DEPTH=${DEPTH:-19} SINGLE=${SINGLE:-38}
if [ -n "$SMOKE" ]; then
    DEV=cpu DT=fp32 DIMS=tiny STEPS=${STEPS_SMOKE:-2} SIZE=${SIZE_SMOKE:-256} SMALL_SIZE=256
fi
COMMIT=$(cat .gpu/commit 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)
export PYTHONPATH=$PWD/export${PYTHONPATH:+:$PYTHONPATH}
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0))s] $*"; }
fluxexport() { $PY -m fluxexport "$@"; }

# A model dir written by an earlier call (write_model_dir renames it into place when whole).
have_model() { grep -qs "\"name\": \"$2\"" "$1/manifest.json"; }

# The C side against $PY's torch, the Debian packages of .gpu/debs unpacked into a private
# prefix (never over /); without .gpu/debs, the system's packages.
build() {
    local P=$WORK/prefix LIBDIR=$WORK/prefix/usr/lib/x86_64-linux-gnu flags=()
    if ls .gpu/debs/*.deb >/dev/null 2>&1; then
        if [ ! -e "$P/.done" ]; then
            rm -rf "$P" && mkdir -p "$P"
            for f in .gpu/debs/*.deb; do
                if command -v dpkg-deb >/dev/null; then
                    dpkg-deb -x "$f" "$P"
                else
                    local data
                    data=$(ar t "$f" | grep '^data.tar')
                    case "$data" in
                    *.zst) ar p "$f" "$data" | tar -x --zstd -C "$P" ;;
                    *) ar p "$f" "$data" | tar -x --xz -C "$P" ;;
                    esac
                fi
            done
            touch "$P/.done"
        fi
        flags=(C_DEPS_CFLAGS="-isystem $P/usr/include -isystem $P/usr/include/json-c -isystem $P/usr/include/libpng16"
            C_DEPS_LIBS="-L$LIBDIR -Wl,-rpath,$LIBDIR -ljson-c -lutf8proc -lpng16 -lm -ldl -pthread"
            PLUGIN_T5_LIBS="-L$LIBDIR -Wl,-rpath,$LIBDIR -lutf8proc -lsentencepiece")
    fi
    local torch_dir torch_abi
    torch_dir=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')
    torch_abi=$($PY -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
    make -j"$(nproc)" c BUILD="$WORK/build" NO_DEPS=1 TORCH_DIR="$torch_dir" \
        TORCH_ABI="$torch_abi" "${flags[@]}"
    echo "shim built with -std=$(cat "$WORK"/build/cxxstd/torch*)"
}

start_build() {
    if [ -n "${FLUXGEN:-}" ]; then
        echo "using $FLUXGEN (no build)"
        BUILD_PID=
        return
    fi
    FLUXGEN=$WORK/build/fluxgen
    build >"$OUT/build-$STAGE.log" 2>&1 &
    BUILD_PID=$!
}

wait_build() {
    [ -z "$BUILD_PID" ] && return 0
    if ! wait "$BUILD_PID"; then
        tail -n 40 "$OUT/build-$STAGE.log"
        echo "build failed (whole log: $OUT/build-$STAGE.log)" | tee -a "$R"
        exit 1
    fi
    tail -n 3 "$OUT/build-$STAGE.log"
}

random_model() { # DIR DEPTH SINGLE [REUSE]
    local name="flux-random-$DIMS-$2+$3-$DT-$DEV"
    if have_model "$1" "$name"; then
        stamp "random model $1 ($name) already written"
        return
    fi
    local s
    s=$(date +%s)
    fluxexport random-model --out "$1" --tokenizers build/models/tiny --dims "$DIMS" \
        --depth "$2" --single "$3" --device "$DEV" --dtype "$DT" --name "$name" --force \
        ${4:+--reuse "$4"}
    echo "random model $name written in $(($(date +%s) - s)) s ($(du -sh "$1" | cut -f1))" | tee -a "$R"
}

smoke() {
    $PY tools/gpu/bench_gpu.py env --results "$R"
    start_build
    stamp "tiny model: fp32 on the cpu and $DT on $DEV"
    have_model "$WORK/tiny-fp32" flux-tiny-fp32 ||
        fluxexport export --source build/tiny-src/bfl -o "$WORK/tiny-fp32" --force --quiet \
            --device cpu --dtype fp32 --name flux-tiny-fp32
    have_model "$WORK/tiny-$DT-$DEV" "flux-tiny-$DT-$DEV" ||
        fluxexport export --source build/tiny-src/bfl -o "$WORK/tiny-$DT-$DEV" --force \
            --quiet --device "$DEV" --dtype "$DT" --name "flux-tiny-$DT-$DEV"
    stamp "random $DIMS model, 2 + 2 blocks"
    random_model "$WORK/rand-2+2" 2 2
    stamp "waiting for the build"
    wait_build
    stamp "tiny model: fluxgen on $DEV against the reference"
    rm -rf "$WORK/lat-dev" && mkdir -p "$WORK/lat-dev"
    local prompt="a small red fox in the snow, watercolor"
    "$FLUXGEN" --model "$WORK/tiny-$DT-$DEV" --device "$DEV" --prompt "$prompt" --steps 4 \
        --width 256 --height 256 --seed 7 --json --dump-latents "$WORK/lat-dev" \
        -o "$WORK/tiny-dev.png"
    $PY tools/gpu/bench_gpu.py parity --fluxgen "$FLUXGEN" --model32 "$WORK/tiny-fp32" \
        --prompt "$prompt" --steps 4 --size 256 --seed 7 --dev-latents "$WORK/lat-dev" \
        --dev-png "$WORK/tiny-dev.png" --dtype "$DT" --results "$R" || parity_failed=1
    stamp "2 + 2 block model: 2 steps at $SMALL_SIZE through fluxgen, then from Python"
    "$FLUXGEN" --model "$WORK/rand-2+2" --device "$DEV" --prompt "a red fox" --steps 2 \
        --width "$SMALL_SIZE" --height "$SMALL_SIZE" --seed 1 --json -o "$WORK/rand-2+2.png" \
        >"$OUT/fluxgen-smoke.jsonl"
    cat "$OUT/fluxgen-smoke.jsonl"
    $PY tools/gpu/bench_gpu.py full --model "$WORK/rand-2+2" --device "$DEV" --steps 2 \
        --size "$SMALL_SIZE" --fluxgen "$FLUXGEN" --fluxgen-json "$OUT/fluxgen-smoke.jsonl" \
        --results "$R" --commit "$COMMIT" --json "$OUT/smoke.json"
    [ -z "${parity_failed:-}" ]
}

full() {
    $PY tools/gpu/bench_gpu.py env --results "$R"
    start_build
    stamp "random $DIMS model, $DEPTH + $SINGLE blocks (reusing what rand-2+2 shares)"
    random_model "$WORK/rand-full" "$DEPTH" "$SINGLE" "$WORK/rand-2+2"
    wait_build
    stamp "fluxgen: 2 images, $STEPS steps at ${SIZE}x$SIZE"
    "$FLUXGEN" --model "$WORK/rand-full" --device "$DEV" --prompt "a red fox" --steps "$STEPS" \
        --width "$SIZE" --height "$SIZE" --seed 1 --count 2 --json -o "$WORK/rand-full-%d.png" \
        >"$OUT/fluxgen-full.jsonl"
    cat "$OUT/fluxgen-full.jsonl"
    stamp "the same modules from Python"
    $PY tools/gpu/bench_gpu.py full --model "$WORK/rand-full" --device "$DEV" --steps "$STEPS" \
        --size "$SIZE" --fluxgen "$FLUXGEN" --fluxgen-json "$OUT/fluxgen-full.jsonl" \
        --results "$R" --commit "$COMMIT" --json "$OUT/full.json" ${EAGER:+--eager}
}

stamp "stage $STAGE (commit $COMMIT, work $WORK, out $OUT)"
trap 'echo "stage $STAGE: exit $? after $(($(date +%s) - t0)) s" | tee -a "$R"' EXIT
"$STAGE"
