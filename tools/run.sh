#!/bin/sh
# Serves fluxcgi through nginx in the foreground: `make run` calls this.  Ctrl-C (or
# SIGTERM) stops nginx and fluxcgi (which drains: the running job goes back to the queue).
#
# Usage: tools/run.sh --fluxcgi BIN --model DIR --dir RUNDIR --port PORT [--tiny]
#   RUNDIR holds the filled configs, the socket, the SQLite file, logs and nginx's temp
#   files; jobs survive a restart.  --tiny: small request defaults (256x256, 4 steps), so
#   the tiny random model answers in about a second on the CPU.
set -eu

FLUXCGI= MODEL= DIR= PORT=8080 TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --fluxcgi) FLUXCGI=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        *) echo "run.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ -n "$FLUXCGI" ] && [ -n "$MODEL" ] && [ -n "$DIR" ] || {
    echo "usage: tools/run.sh --fluxcgi BIN --model DIR --dir RUNDIR --port PORT [--tiny]" >&2
    exit 2
}

# The model dir first: a wrong MODEL= is the likeliest mistake, and cd would only say
# "can't cd".  A checkpoint folder (not yet exported) gets the command that converts it.
EXPORT_HINT="a model dir is written by 'fluxexport export --source CHECKPOINT -o DIR'"
if [ ! -e "$MODEL" ]; then
    echo "run.sh: model dir '$MODEL' does not exist (make run MODEL=DIR takes a model dir;" \
        "$EXPORT_HINT)" >&2
    exit 2
fi
if [ ! -d "$MODEL" ]; then
    echo "run.sh: model dir '$MODEL' is not a directory ($EXPORT_HINT)" >&2
    exit 2
fi
if [ ! -f "$MODEL/manifest.json" ]; then
    LAYOUT=
    if [ -f "$MODEL/model_index.json" ] || [ -d "$MODEL/transformer" ]; then
        LAYOUT=diffusers
    else
        for f in "$MODEL"/*.safetensors; do
            [ -e "$f" ] && LAYOUT=bfl
            break
        done
    fi
    if [ -n "$LAYOUT" ]; then
        echo "run.sh: '$MODEL' has no manifest.json: it looks like a $LAYOUT checkpoint, not a" \
            "model dir; convert it with 'fluxexport export --source $MODEL --layout $LAYOUT" \
            "-o OUT' and run 'make run MODEL=OUT'" >&2
    else
        echo "run.sh: '$MODEL' has no manifest.json: not a model dir ($EXPORT_HINT)" >&2
    fi
    exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONF=$ROOT/conf
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
FLUXCGI=$(cd "$(dirname "$FLUXCGI")" && pwd)/$(basename "$FLUXCGI")
MODEL=$(cd "$MODEL" && pwd)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
mkdir -p "$DIR/logs" "$DIR/tmp/body" "$DIR/tmp/fastcgi" "$DIR/tmp/proxy" "$DIR/tmp/uwsgi" \
    "$DIR/tmp/scgi"
SOCKET=$DIR/fluxcgi.sock
DEVICE=$(sed -n 's/.*"device": *"\([^"]*\)".*/\1/p' "$MODEL/manifest.json" | head -n 1)
[ -n "$DEVICE" ] || DEVICE=cpu

fill() {
    sed -e "s|@SOCKET@|$SOCKET|g" -e "s|@DB@|$DIR/jobs.db|g" -e "s|@MODEL@|$MODEL|g" \
        -e "s|@DEVICE@|$DEVICE|g" -e "s|@LOG@|$DIR/logs/fluxcgi.log|g" \
        -e "s|@PREFIX@|$DIR|g" -e "s|@LISTEN@|127.0.0.1:$PORT|g" -e "s|@PORT@|$PORT|g" \
        -e "s|@CONF@|$CONF|g" -e "s|@USER@|user $(id -un);|g" "$1"
}
# make run serves 127.0.0.1 only: no API keys (the installed config has auth = on)
fill "$CONF/fluxcgi.conf" | sed -e 's|^auth = on |auth = off|' > "$DIR/fluxcgi.conf"
if [ "$TINY" = 1 ]; then
    printf '\n# make run with the tiny model on the CPU: small defaults\n%s\n%s\n%s\n' \
        "default_steps = 4" "default_width = 256" "default_height = 256" >> "$DIR/fluxcgi.conf"
fi
if [ "$DEVICE" = cpu ]; then
    # fp32 on the CPU: a 2048x2048 request within a manifest's bounds grew past 14 GB; the
    # tiny model's images stay small, a real model keeps its 1024x1024 default
    CPU_MAX=1024
    [ "$TINY" = 1 ] && CPU_MAX=512
    printf '\n# make run on the CPU: a bounded image size\nmax_size = %s\n' "$CPU_MAX" \
        >> "$DIR/fluxcgi.conf"
fi
fill "$CONF/nginx.conf" > "$DIR/nginx.conf"
fill "$CONF/fluxcgi-site.conf" > "$DIR/fluxcgi-site.conf"

"$FLUXCGI" --config "$DIR/fluxcgi.conf" --check
rm -f "$SOCKET"
"$FLUXCGI" --config "$DIR/fluxcgi.conf" &
FX_PID=$!
NGINX_PID=
stop() {
    trap - INT TERM EXIT
    [ -n "$NGINX_PID" ] && kill -TERM "$NGINX_PID" 2>/dev/null || true
    kill -TERM "$FX_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "run.sh: stopped (jobs are kept in $DIR/jobs.db)"
}
# Ctrl-C and SIGTERM are the normal way to stop: status 0.  Any other exit is a failure.
trap 'stop; exit 0' INT TERM
trap stop EXIT

i=0
while [ ! -S "$SOCKET" ]; do
    kill -0 "$FX_PID" 2>/dev/null || { echo "run.sh: fluxcgi exited; see $DIR/logs/fluxcgi.log" >&2; exit 1; }
    i=$((i + 1)); [ $i -lt 600 ] || { echo "run.sh: no socket from fluxcgi" >&2; exit 1; }
    sleep 0.1
done
# nginx writes its pid file only once its listening socket is bound, so the pid file (not
# the mere start) says it serves; a failed bind makes it exit after about 2.5 s of retries.
rm -f "$DIR/nginx.pid"
NGINX_ERR=$DIR/logs/nginx-start.err
"$NGINX" -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/logs/nginx-error.log" 2>"$NGINX_ERR" &
NGINX_PID=$!
i=0
while [ "$(cat "$DIR/nginx.pid" 2>/dev/null)" != "$NGINX_PID" ]; do
    if ! kill -0 "$NGINX_PID" 2>/dev/null; then
        NGINX_RC=0
        wait "$NGINX_PID" || NGINX_RC=$?
        NGINX_PID=
        uniq "$NGINX_ERR" >&2
        if grep -q "Address already in use" "$NGINX_ERR" "$DIR/logs/nginx-error.log" 2>/dev/null; then
            echo "run.sh: port $PORT on 127.0.0.1 is already in use; choose another one:" \
                "make run RUN_PORT=N (tools/run.sh --port N)" >&2
        else
            echo "run.sh: nginx exited with status $NGINX_RC; see $DIR/logs/nginx-error.log" >&2
        fi
        exit 1
    fi
    i=$((i + 1)); [ $i -lt 300 ] || { echo "run.sh: nginx did not start within 30 s; see $DIR/logs/nginx-error.log" >&2; exit 1; }
    sleep 0.1
done
echo "run.sh: serving $MODEL on http://127.0.0.1:$PORT (fluxcgi log: $DIR/logs/fluxcgi.log); Ctrl-C stops"
while kill -0 "$FX_PID" 2>/dev/null && kill -0 "$NGINX_PID" 2>/dev/null; do
    sleep 1
done
echo "run.sh: a process exited; stopping" >&2
exit 1
