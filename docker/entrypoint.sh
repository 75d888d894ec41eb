#!/bin/sh
# Starts fluxcgi in a container: the installed /etc/fluxcgi/fluxcgi.conf with the model dir
# from $FLUXCGI_MODEL (the tiny random model when that holds no manifest.json, with small
# request defaults), the device from $FLUXCGI_DEVICE, and the log on stderr (docker logs).
set -eu
MODEL=${FLUXCGI_MODEL:-/models/default}
CONF=/run/fluxcgi/fluxcgi.conf
TINY=0
if [ ! -f "$MODEL/manifest.json" ]; then
    echo "fluxcgi-entrypoint: no model in '$MODEL'; serving the tiny random model" >&2
    MODEL=/usr/local/share/fluxcgi/tiny-model
    TINY=1
fi
sed -e "s|^model = .*|model = $MODEL|" -e '/^log = /d' -e 's|^socket_mode = .*|socket_mode = 0660|' \
    /etc/fluxcgi/fluxcgi.conf > "$CONF"
if [ -n "${FLUXCGI_DEVICE:-}" ]; then
    echo "device = $FLUXCGI_DEVICE" >> "$CONF"
fi
if [ "$TINY" = 1 ]; then
    printf 'default_steps = 4\ndefault_width = 256\ndefault_height = 256\n' >> "$CONF"
fi
exec fluxcgi --config "$CONF"
