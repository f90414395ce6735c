#!/usr/bin/env bash
# Starts a Temporal dev server and the proxy in front of it; Ctrl-C stops both.
set -euo pipefail
root=${TAP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
export TAP_ROOT=$root
bin=$root/.venv/bin
certs=$root/certs-dev
mkdir -p "$root/.run"

if ! "$bin/temporal" operator cluster health --address 127.0.0.1:17233 >/dev/null 2>&1; then
  "$bin/temporal" server start-dev --headless --ip 127.0.0.1 --port 17233 --log-level warn \
    >"$root/.run/temporal.log" 2>&1 &
  temporal_pid=$!
  trap 'kill $temporal_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    "$bin/temporal" operator cluster health --address 127.0.0.1:17233 >/dev/null 2>&1 && break
    sleep 0.2
  done
fi

token=$("$bin/temporal-auth-proxy" dev-token --certs "$certs" --subject dev-user \
  --permission default:admin --permission temporal-system:admin)
cat <<MSG

Temporal dev server: 127.0.0.1:17233 (plaintext, loopback only)
Proxy:               127.0.0.1:7233 (mTLS + JWT), admin http://127.0.0.1:9090/metrics

Paste this to talk to Temporal through the proxy:

  $bin/temporal workflow list --namespace default --address 127.0.0.1:7233 \\
    --tls-ca-path $certs/ca.pem --tls-cert-path $certs/client.pem \\
    --tls-key-path $certs/client.key --tls-server-name proxy.test \\
    --api-key $token

MSG
# Not exec: the EXIT trap must still stop the dev server when the proxy ends.
"$bin/temporal-auth-proxy" serve --config "$root/deploy/dev/proxy.yaml"
