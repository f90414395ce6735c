#!/usr/bin/env bash
# Starts a Temporal dev server with its Web UI, the proxy in front of it, and one sample
# workflow whose input is encrypted; prints where the UI shows it decrypted. Ctrl-C stops all.
set -euo pipefail
root=${TAP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
export TAP_ROOT=$root
bin=$root/.venv/bin
certs=$root/certs-dev
ui_port=8233    # deploy/dev/proxy.yaml's codec.cors.origins name this port
codec=http://127.0.0.1:9090   # the proxy's admin listener (Codec Server), as the UI calls it
mkdir -p "$root/.run"

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop EXIT
answers() { "$bin/python" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=1)' "$1" \
  >/dev/null 2>&1; }

if ! "$bin/temporal" operator cluster health --address 127.0.0.1:17233 >/dev/null 2>&1; then
  # The UI on loopback, its Codec Server the proxy; no newsfeed fetch (nothing leaves the host).
  "$bin/temporal" server start-dev --ip 127.0.0.1 --port 17233 --log-level warn \
    --ui-ip 127.0.0.1 --ui-port "$ui_port" --ui-codec-endpoint "$codec" --ui-disable-news-fetch \
    >"$root/.run/temporal.log" 2>&1 &
  pids+=($!)
  healthy=no
  for _ in $(seq 1 100); do
    "$bin/temporal" operator cluster health --address 127.0.0.1:17233 >/dev/null 2>&1 \
      && { healthy=yes; break; }
    sleep 0.2
  done
  if [ "$healthy" != yes ]; then
    echo "The Temporal dev server did not come up in 20 s (port 17233 or $ui_port taken?);" \
      "see $root/.run/temporal.log" >&2
    exit 1
  fi
else
  echo "A Temporal dev server already runs on 127.0.0.1:17233; its Web UI may lack the codec." >&2
fi

"$bin/temporal-auth-proxy" serve --config "$root/deploy/dev/proxy.yaml" &
proxy=$!
pids+=("$proxy")
ready=no
for _ in $(seq 1 100); do
  answers http://127.0.0.1:9090/readyz && { ready=yes; break; }
  kill -0 "$proxy" 2>/dev/null || { echo "The proxy exited (see above)." >&2; exit 1; }
  sleep 0.2
done
if [ "$ready" != yes ]; then
  echo "The proxy is not ready after 20 s: see its log above and http://127.0.0.1:9090/readyz" >&2
  exit 1
fi

token=$("$bin/temporal-auth-proxy" dev-token --certs "$certs" --subject dev-user \
  --permission default:admin --permission temporal-system:admin)
sample=$("$bin/python" "$root/deploy/dev/sample.py" --certs "$certs" --address 127.0.0.1:7233 \
  --token "$token" --ui "http://localhost:$ui_port" 2>&1) || sample="The sample failed: $sample"
cat <<MSG

Temporal dev server: 127.0.0.1:17233 (plaintext, loopback only)
Proxy:               127.0.0.1:7233 (mTLS + JWT), admin $codec/metrics
Web UI:              http://localhost:$ui_port (Codec Server: $codec, key certs-dev/codec.key)

$sample

Paste this to talk to Temporal through the proxy (add --codec-endpoint $codec to decrypt):

  $bin/temporal workflow list --namespace default --address 127.0.0.1:7233 \\
    --tls-ca-path $certs/ca.pem --tls-cert-path $certs/client.pem \\
    --tls-key-path $certs/client.key --tls-server-name proxy.test \\
    --api-key $token

MSG
# Until the proxy ends (Ctrl-C: the EXIT trap stops it and the dev server).
wait "$proxy"
