#!/usr/bin/env bash
# Issue 7's benchmark: this gateway side by side with nginx, HAProxy jwt_verify and the tutorial's
# Flask gateway, under wrk, on loopback. See bench/README.md.
#
#   bench/run.sh            full run: 3 rounds x 10 s x 64 connections per target, criterion,
#                           writes bench/results/ and the generated part of BENCHMARKS.md
#   bench/run.sh --quick    1 s per target, 1 round, no criterion; results in bench/results/quick.
#                           For CI: fails only when a target cannot start or answers wrongly.
#   bench/run.sh --profile  perf profile of the 1-worker gateway under the same load
#   bench/run.sh --help     every option (bench/harness.py)
#
# Installs what it needs first: wrk, nginx and HAProxy from Debian (apt-get, as root or via sudo),
# linux-perf for --profile, and the tutorial's Flask requirements in bench/.venv from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_COMMAND="bench/run.sh${*:+ $*}"

profile=false
for arg in "$@"; do
    case "$arg" in
        --profile) profile=true ;;
        -h|--help) exec python3 bench/harness.py --help ;;
    esac
done

say() { echo "[bench] $*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else say "need root to run: $*"; exit 2
    fi
}

# ------------------------------------------------------------------ Debian packages
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v taskset >/dev/null || need+=(util-linux)
if $profile && ! perf --version >/dev/null 2>&1; then need+=(linux-perf); fi
if ((${#need[@]})); then
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    # policy-rc.d-less machines would start the packaged nginx/haproxy services: the harness
    # only uses loopback ports it picks, so they do not get in the way, but say so.
    as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"
version=$(haproxy -v 2>/dev/null | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
read -r major minor <<<"${version:-0 0}"
if ((major < 2 || (major == 2 && minor < 5))); then
    say "HAProxy ${major}.${minor} has no jwt_verify; need >= 2.5 (Debian bookworm ships 2.6)"
    exit 2
fi

# ------------------------------------------------------------------ the tutorial's Flask
venv=bench/.venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum bench/flask/requirements.txt | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || $(cat "$stamp" 2>/dev/null || true) != "$want" ]]; then
    say "creating $venv with the tutorial's requirements (pip, PyPI)"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's own python3 keeps venv/ensurepip in a separate package.
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/flask/requirements.txt
    echo "$want" >"$stamp"
fi

if $profile; then
    exec python3 bench/profile.py "$@"
fi
exec python3 bench/harness.py "$@"
