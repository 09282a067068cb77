#!/bin/sh
# The proxy's entrypoint (docker-compose.yml, service `proxy`): write the settings below into the
# nginx.conf template, check each first, then exec nginx on the result with this script's arguments.
# A plain sh script with sed: it runs the same in the official nginx image and in a bare Debian one,
# and on a read-only root filesystem (the result goes to /tmp).
#
#   PROXY_RATE_PER_ADDRESS   requests a second a client address may send on average, e.g. 20r/s
#   PROXY_BURST_PER_ADDRESS  requests above that rate it may send at once before it gets 429s: the
#                            first half are served at once, the rest held and let through at the rate
#   PROXY_RATE_PER_KEY       the same for each API key (requests that carry one)
#   PROXY_BURST_PER_KEY
#   MAX_UPLOAD_BYTES         the largest request body, in bytes: the service's own setting, which the
#                            proxy enforces first (at least 1024, as the service takes)
set -eu

# Paths are variables so the test suite can run this script on the host against a real nginx.
TEMPLATE=${NGINX_TEMPLATE:-/etc/nginx/cifar10.conf}
CONF=${NGINX_CONF:-/tmp/cifar10.conf}

fail() {
    echo "nginx-entrypoint: $*" >&2
    exit 1
}
rate() {  # NAME: its value if it is a rate nginx takes, in whole requests a second (at least 1)
    # Per second only: the 429's Retry-After is 1 s, which refills at least one request at any such rate.
    eval "value=\${$1-}"
    number=${value%r/s}
    case "$number" in
        ''|*[!0-9]*|0*) fail "$1 is '$value': whole requests a second, at least 1, e.g. 20r/s" ;;
    esac
    [ "$number" != "$value" ] || fail "$1 is '$value': a rate ends in r/s, e.g. 20r/s"
    echo "$value"
}
burst() {  # NAME: its value if it is a whole number of requests, at least 1 (nginx takes no 0)
    eval "value=\${$1-}"
    case "$value" in
        ''|*[!0-9]*|0*) fail "$1 is '$value': a whole number of requests, at least 1, e.g. 40" ;;
    esac
    echo "$value"
}

bytes() {  # NAME: its value as plain digits if it is a whole number of bytes, at least 1024, as the service
    # reads it (blanks, a leading + and _ between digits allowed): the proxy must not refuse what the service takes.
    eval "value=\${$1-}"
    digits=$(printf '%s' "$value" | tr -d ' \t_' | sed 's/^+//; s/^0*//')
    case "$digits" in
        ''|*[!0-9]*) fail "$1 is '$value': a whole number of bytes, at least 1024, e.g. 10485760" ;;
    esac
    [ "${#digits}" -le 15 ] || fail "$1 is '$value': at most 15 digits (nginx's largest body size)"
    [ "${#digits}" -gt 4 ] || [ "$digits" -ge 1024 ] || fail "$1 is '$value': at least 1024 bytes"
    echo "$digits"
}
in_words() {  # BYTES: "10 MB (10,485,760 bytes)", as the service words a size (app/errors.py, size_in_words)
    awk -v n="$1" 'BEGIN {
        s = n ""; grouped = ""
        while (length(s) > 3) { grouped = "," substr(s, length(s) - 2) grouped; s = substr(s, 1, length(s) - 3) }
        grouped = s grouped
        if (n < 1024) { print grouped " bytes"; exit }
        unit = n >= 1048576 ? "MB" : "KB"; rounded = sprintf("%.1f", n / (unit == "MB" ? 1048576 : 1024))
        sub(/\.0$/, "", rounded)
        print rounded " " unit " (" grouped " bytes)"
    }'
}

rate_per_address=$(rate PROXY_RATE_PER_ADDRESS)
burst_per_address=$(burst PROXY_BURST_PER_ADDRESS)
rate_per_key=$(rate PROXY_RATE_PER_KEY)
burst_per_key=$(burst PROXY_BURST_PER_KEY)
max_upload_bytes=$(bytes MAX_UPLOAD_BYTES)
max_upload_in_words=$(in_words "$max_upload_bytes")

delay() {  # BURST: limit_req's parameter that lets the first half of a burst through at once, the rest
    # held to the rate (nginx.conf); nginx refuses delay=0, and holds the whole burst without the parameter.
    if [ "$(( $1 / 2 ))" -gt 0 ]; then echo "delay=$(( $1 / 2 ))"; fi
}
delay_per_address=$(delay "$burst_per_address")
delay_per_key=$(delay "$burst_per_key")

# Only these names are replaced: nginx's own $variables stay as they are.
sed -e "s|\${PROXY_BURST_PER_ADDRESS_DELAY}|$delay_per_address|g" \
    -e "s|\${PROXY_BURST_PER_KEY_DELAY}|$delay_per_key|g" \
    -e "s|\${PROXY_RATE_PER_ADDRESS}|$rate_per_address|g" \
    -e "s|\${PROXY_BURST_PER_ADDRESS}|$burst_per_address|g" \
    -e "s|\${PROXY_RATE_PER_KEY}|$rate_per_key|g" \
    -e "s|\${PROXY_BURST_PER_KEY}|$burst_per_key|g" \
    -e "s|\${MAX_UPLOAD_BYTES}|$max_upload_bytes|g" \
    -e "s|\${MAX_UPLOAD_BYTES_IN_WORDS}|$max_upload_in_words|g" \
    "$TEMPLATE" > "$CONF"
if grep -n '\${[A-Z_]*}' "$CONF" | grep -v '^[0-9]*: *#' >&2; then
    fail "$TEMPLATE names a setting this script does not fill in (above)"
fi

exec nginx -c "$CONF" "$@"
