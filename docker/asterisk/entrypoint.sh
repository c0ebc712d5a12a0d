#!/bin/bash
# Start Asterisk 22 for the IVR in a container: check the site settings, render
# /etc/asterisk from the repository's asterisk-config/ (kept in /usr/share/ivr/asterisk-config)
# and exec Asterisk in the foreground (it is PID 1: `docker stop` sends it SIGTERM).
#
# Environment (see .env.example):
#   IVR_ARI_USER, IVR_ARI_PASSWORD   the ARI user the service connects with
#   SIP_EXTERNAL_ADDRESS             the host's address as softphones and the carrier reach
#                                    it: Asterisk announces it in SIP and SDP (NAT)
#   SIP_PORT                         the SIP port published on the host (default 5060)
#   RTP_PORT_START, RTP_PORT_END     the RTP range; publish exactly the same range
#   CARRIER_ADDRESS, CARRIER_PORT    the carrier trunk (calls from that address are the
#                                    carrier; callbacks go out to it)
#   SIP_PASSWORD_<NAME>              one agent softphone account <name> (lower case) per
#                                    variable: endpoint PJSIP/<name>, SIP user <name>
#   DEMO_CALLER_PASSWORD             optional: an account "caller" that dials the DIDs like
#                                    the carrier does, presenting DEMO_CALLER_ID
# Refuses to start (exit 78) while a value is missing, malformed or a CHANGE-ME placeholder.
set -euo pipefail

SRC=/usr/share/ivr/asterisk-config
ETC=/etc/asterisk
problems=()

refuse_if_placeholder() {  # name value
    if [[ "${2^^}" == *CHANGE-ME* || "${2^^}" == *CHANGEME* ]]; then
        problems+=("$1 is still the placeholder from .env.example: set a real value")
        return 1
    fi
}

need_secret() {  # name: a password: long, no placeholder, characters safe in Asterisk's config
    local name=$1 value=${!1:-}
    if [ -z "$value" ]; then
        problems+=("$name is not set"); return 0
    fi
    refuse_if_placeholder "$name" "$value" || return 0
    if [ ${#value} -lt 12 ]; then
        problems+=("$name is too short (at least 12 characters; e.g. openssl rand -hex 16)")
    elif [[ ! "$value" =~ ^[A-Za-z0-9._~+/=@%^*!-]+$ ]]; then
        problems+=("$name may hold only letters, digits and ._~+/=@%^*!- (no spaces, ; or quotes)")
    fi
}

need_value() {  # name regex description
    local name=$1 value=${!1:-}
    if [ -z "$value" ]; then
        problems+=("$name is not set ($3)"); return 0
    fi
    refuse_if_placeholder "$name" "$value" || return 0
    [[ "$value" =~ $2 ]] || problems+=("$name=$value is not $3")
}

: "${SIP_PORT:=5060}" "${CARRIER_PORT:=5060}" "${RTP_PORT_START:=10000}" "${RTP_PORT_END:=10199}"
: "${DEMO_CALLER_ID:=2015550123}"
need_value IVR_ARI_USER '^[A-Za-z0-9_.-]+$' "a user name (letters, digits, _ . -)"
need_secret IVR_ARI_PASSWORD
need_value SIP_EXTERNAL_ADDRESS '^[A-Za-z0-9.:-]+$' "an IP address or host name of this host"
need_value CARRIER_ADDRESS '^[A-Za-z0-9.:-]+$' "the carrier's IP address"
for var in SIP_PORT CARRIER_PORT RTP_PORT_START RTP_PORT_END; do
    need_value "$var" '^[0-9]+$' "a port number"
done
if [[ "$RTP_PORT_START" =~ ^[0-9]+$ && "$RTP_PORT_END" =~ ^[0-9]+$ ]] \
        && [ "$RTP_PORT_START" -ge "$RTP_PORT_END" ]; then
    problems+=("RTP_PORT_START must be below RTP_PORT_END")
fi
agents=()
for var in $(compgen -v | grep '^SIP_PASSWORD_' || true); do
    need_secret "$var"
    name=${var#SIP_PASSWORD_}
    name=${name,,}
    [[ "$name" =~ ^[a-z0-9_]+$ ]] || problems+=("$var: the account name must be letters, digits or _")
    agents+=("$name")
done
if [ -n "${DEMO_CALLER_PASSWORD:-}" ]; then
    need_secret DEMO_CALLER_PASSWORD
    need_value DEMO_CALLER_ID '^\+?[0-9]+$' "a phone number"
fi

if [ ${#problems[@]} -gt 0 ]; then
    {
        echo "ivr-asterisk: refusing to start; fix these in your .env (see .env.example):"
        printf '  - %s\n' "${problems[@]}"
    } >&2
    exit 78  # EX_CONFIG
fi

# Replace exactly one line; fail loudly when asterisk-config/ changed shape.
subst() {  # file old new
    local count
    count=$(grep -cxF -- "$2" "$1" || true)
    if [ "$count" != 1 ]; then
        echo "ivr-asterisk: $1: expected exactly one line '$2' to override, found $count" >&2
        exit 70
    fi
    OLD=$2 NEW=$3 awk '$0 == ENVIRON["OLD"] { print ENVIRON["NEW"]; next } { print }' \
        "$1" >"$1.new"
    mv "$1.new" "$1"
}

umask 027
cp "$SRC"/*.conf "$ETC"/

# ARI: reachable from the service's container over the compose network (never published).
subst "$ETC/http.conf" "bindaddr = 127.0.0.1" "bindaddr = 0.0.0.0"
subst "$ETC/rtp.conf" "rtpstart = 10000" "rtpstart = $RTP_PORT_START"
subst "$ETC/rtp.conf" "rtpend = 20000" "rtpend = $RTP_PORT_END"
# Behind Docker's NAT: announce the host's address and published port in SIP and SDP.
subst "$ETC/pjsip.conf" "bind = 0.0.0.0:5060" "bind = 0.0.0.0:5060
external_media_address = $SIP_EXTERNAL_ADDRESS
external_signaling_address = $SIP_EXTERNAL_ADDRESS
external_signaling_port = $SIP_PORT"
subst "$ETC/pjsip.conf" "contact = sip:192.0.2.10:5060" "contact = sip:$CARRIER_ADDRESS:$CARRIER_PORT"
subst "$ETC/pjsip.conf" "match = 192.0.2.10" "match = $CARRIER_ADDRESS"

umask 077
printf '[%s]\ntype = user\nread_only = no\npassword = %s\n' \
    "$IVR_ARI_USER" "$IVR_ARI_PASSWORD" >"$ETC/ari_users.conf"
{
    echo "; generated at container start from SIP_PASSWORD_* (docker/asterisk/entrypoint.sh)"
    for name in "${agents[@]}"; do
        var="SIP_PASSWORD_${name^^}"
        printf '\n[%s](agent-endpoint)\nauth = %s\naors = %s\n\n' "$name" "$name" "$name"
        printf '[%s](agent-auth)\nusername = %s\npassword = %s\n\n' "$name" "$name" "${!var}"
        printf '[%s](agent-aor)\n' "$name"
    done
    if [ -n "${DEMO_CALLER_PASSWORD:-}" ]; then
        # A softphone that dials in like the carrier, presenting a number of the region.
        printf '\n[caller](agent-endpoint)\ncontext = from-carrier\nauth = caller\n'
        printf 'aors = caller\ncallerid = "Demo caller" <%s>\n\n' "$DEMO_CALLER_ID"
        printf '[caller](agent-auth)\nusername = caller\npassword = %s\n\n' "$DEMO_CALLER_PASSWORD"
        printf '[caller](agent-aor)\n'
    fi
} >"$ETC/pjsip_agents.conf"

echo "ivr-asterisk: SIP udp/5060 (published as $SIP_EXTERNAL_ADDRESS:$SIP_PORT)," \
    "RTP $RTP_PORT_START-$RTP_PORT_END, carrier $CARRIER_ADDRESS:$CARRIER_PORT," \
    "${#agents[@]} softphone account(s)${DEMO_CALLER_PASSWORD:+ + demo caller}"
exec /usr/sbin/asterisk -f -n "$@"
