#!/usr/bin/env bash
# Runs the Postman collection with Newman against the three binaries started natively on loopback,
# each on a port the OS picks. Usage: scripts/newman-local.sh [target dir profile, default debug]
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-debug}
bin=target/$profile
# --tests gives the binaries the same features as `cargo test`, so nothing is compiled twice.
cargo build --locked --workspace --bins --tests $([ "$profile" = release ] && echo --release)

if command -v newman >/dev/null 2>&1; then
    newman=(newman)
elif [ -x ../shared/tools/newman/newman ]; then
    newman=(../shared/tools/newman/newman)
elif command -v npx >/dev/null 2>&1; then
    newman=(npx --yes newman@6)
else
    echo "newman-local: no Newman found (newman, ../shared/tools/newman/newman or npx)" >&2
    exit 1
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# start NAME VAR=VALUE...: starts a binary on 127.0.0.1:0 and sets $addr to the address it logs.
start() {
    local name=$1; shift
    env HOST=127.0.0.1 PORT=0 RUST_LOG=info "$@" "$bin/$name" >/dev/null 2>"$work/$name.log" &
    pids+=($!)
    # Polls the log for the bound address; the port is only known once the program has bound it.
    for _ in $(seq 1 300); do
        addr=$(grep -o 'listening on http://[0-9.:]*' "$work/$name.log" | head -n1 | sed 's|.*http://||' || true)
        [ -n "$addr" ] && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "newman-local: $name did not start:" >&2
    cat "$work/$name.log" >&2
    return 1
}

start service-one; one=$addr
start service-two; two=$addr
start gateway "ROUTES=/service1=http://$one,/service2=http://$two"; gateway=$addr
echo "newman-local: gateway on $gateway, service-one on $one, service-two on $two"

"${newman[@]}" run postman/collection.json --env-var "baseUrl=http://$gateway" --bail
