#!/bin/bash
# Start the ivr service in its container: refuse to start while a secret is missing or
# still a CHANGE-ME placeholder from .env.example, then exec `ivr <command> <config>` so
# the service is PID 1 and receives SIGTERM itself (graceful stop).
#   docker compose run --rm ivr check-config      validates the mounted config
set -euo pipefail

problems=()
check_secret() {  # name
    local name=$1 value=${!1:-}
    if [ -z "$value" ]; then
        problems+=("$name is not set")
    elif [[ "${value^^}" == *CHANGE-ME* || "${value^^}" == *CHANGEME* ]]; then
        problems+=("$name is still the placeholder from .env.example: set a real value")
    elif [ ${#value} -lt 12 ]; then
        problems+=("$name is too short (at least 12 characters; e.g. openssl rand -hex 16)")
    fi
}

check_secret IVR_ARI_PASSWORD
check_secret IVR_API_TOKEN
# Console logins (IVR_PASSWORD_<LOGIN>): every one that is set must be a real password.
for var in $(compgen -v | grep '^IVR_PASSWORD_' || true); do
    check_secret "$var"
done
if [ ${#problems[@]} -gt 0 ]; then
    {
        echo "ivr: refusing to start; fix these in your .env (see .env.example):"
        printf '  - %s\n' "${problems[@]}"
    } >&2
    exit 78  # EX_CONFIG
fi

command=${1:-run}
[ $# -gt 0 ] && shift
exec ivr "$command" "${IVR_CONFIG_FILE:-/etc/ivr/config.yaml}" "$@"
