#!/usr/bin/env bash
# Starts Debian's docker-registry on 127.0.0.1 with storage in a temp dir
# (its packaged config listens everywhere and requires auth: never use it).
#
#   eval "$(scripts/registry-test-env.sh start [PORT])"   # exports REGISTRY_URL, REGISTRY_PID, REGISTRY_DIR
#   scripts/registry-test-env.sh stop                     # kills $REGISTRY_PID, removes $REGISTRY_DIR
#
# With HTPASSWD_USER/HTPASSWD_PASSWORD set, the registry requires Basic auth.
set -euo pipefail

cmd=${1:-start}
case "$cmd" in
start)
    command -v docker-registry >/dev/null || { echo "docker-registry missing: apt-get install -y docker-registry" >&2; exit 2; }
    port=${2:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
    dir=$(mktemp -d /tmp/llpipe-registry.XXXXXX)
    auth=""
    if [[ -n "${HTPASSWD_USER:-}" ]]; then
        htpasswd -Bbn "$HTPASSWD_USER" "${HTPASSWD_PASSWORD:-}" >"$dir/htpasswd"
        auth=$'auth:\n  htpasswd:\n    realm: llpipe-test\n    path: '"$dir/htpasswd"
    fi
    cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
$auth
YML
    docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 150); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/v2/"; then
            echo "export REGISTRY_URL=http://127.0.0.1:$port REGISTRY_PID=$pid REGISTRY_DIR=$dir"
            exit 0
        fi
        sleep 0.1
    done
    echo "docker-registry did not start; log:" >&2
    cat "$dir/log" >&2
    kill "$pid" 2>/dev/null || true
    exit 2
    ;;
stop)
    [[ -n "${REGISTRY_PID:-}" ]] && kill "$REGISTRY_PID" 2>/dev/null || true
    [[ -n "${REGISTRY_DIR:-}" && "$REGISTRY_DIR" == /tmp/llpipe-registry.* ]] && rm -rf "$REGISTRY_DIR"
    ;;
*)
    echo "usage: $0 start [PORT] | stop" >&2
    exit 2
    ;;
esac
