#!/bin/bash
# Healthy = ARI answers an authenticated ping (Asterisk's HTTP is up AND ARI serves
# requests: it answers 503 for a moment after HTTP starts). The credentials go to curl on
# stdin, never on a command line.
set -euo pipefail
printf 'user = "%s:%s"\n' "$IVR_ARI_USER" "$IVR_ARI_PASSWORD" \
    | curl --config - -fsS -o /dev/null --max-time 4 http://127.0.0.1:8088/ari/asterisk/ping
