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
fill "$CONF/fluxcgi.conf" > "$DIR/fluxcgi.conf"
if [ "$TINY" = 1 ]; then
    printf '\n# make run with the tiny model on the CPU: small defaults\n%s\n%s\n%s\n' \
        "default_steps = 4" "default_width = 256" "default_height = 256" >> "$DIR/fluxcgi.conf"
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
trap stop INT TERM EXIT

i=0
while [ ! -S "$SOCKET" ]; do
    kill -0 "$FX_PID" 2>/dev/null || { echo "run.sh: fluxcgi exited; see $DIR/logs/fluxcgi.log" >&2; exit 1; }
    i=$((i + 1)); [ $i -lt 600 ] || { echo "run.sh: no socket from fluxcgi" >&2; exit 1; }
    sleep 0.1
done
"$NGINX" -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/logs/nginx-error.log" &
NGINX_PID=$!
echo "run.sh: serving $MODEL on http://127.0.0.1:$PORT (fluxcgi log: $DIR/logs/fluxcgi.log); Ctrl-C stops"
while kill -0 "$FX_PID" 2>/dev/null && kill -0 "$NGINX_PID" 2>/dev/null; do
    sleep 1
done
echo "run.sh: a process exited; stopping" >&2
