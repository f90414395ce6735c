"""A loopback identity provider over real TLS, its certificate from a private CA.

Serves `<issuer>/.well-known/openid-configuration` and `<issuer>/certs` (Keycloak's layout) on
https://127.0.0.1:<port>/realms/prod, plus `/redirect-http` (-> the plain-http twin's JWKS) and
`/redirect-https` (-> its own JWKS) for redirect checks. Counts requests per path.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from proxy.dev.pki import CertificateAuthority

REALM = "/realms/prod"


class HttpsIdp:
    def __init__(
        self,
        ca: CertificateAuthority,
        directory: Path,
        *,
        keys: list[dict[str, Any]],
        dns_names: tuple[str, ...] = ("localhost",),
        ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        self.keys = keys
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        leaf = ca.issue("idp.test", dns_names=dns_names, ip_addresses=ip_addresses, server=True)
        cert_path, key_path = leaf.write(directory, "idp-server")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with state._lock:
                    state.hits[self.path] += 1
                if self.path == REALM + "/.well-known/openid-configuration":
                    doc: Any = {"issuer": state.issuer, "jwks_uri": state.issuer + "/certs"}
                elif self.path == REALM + "/certs":
                    doc = {"keys": state.keys}
                elif self.path in ("/redirect-http", "/redirect-https"):
                    target = state.plain_url if self.path.endswith("http") else state.url
                    self.send_response(302)
                    self.send_header("Location", target + REALM + "/certs")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client refusing our certificate is what several tests expect

        self._https = Server(("127.0.0.1", 0), Handler)
        # The handshake runs per connection in the handler thread, not in the accept loop.
        self._https.socket = context.wrap_socket(
            self._https.socket, server_side=True, do_handshake_on_connect=False
        )
        self._plain = Server(("127.0.0.1", 0), Handler)
        self.url = f"https://127.0.0.1:{self._https.server_address[1]}"
        self.plain_url = f"http://127.0.0.1:{self._plain.server_address[1]}"
        self.issuer = self.url + REALM
        self.discovery_uri = self.issuer + "/.well-known/openid-configuration"
        self.jwks_uri = self.issuer + "/certs"
        for server in (self._https, self._plain):
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def count(self, path: str) -> int:
        with self._lock:
            return self.hits[path]

    def close(self) -> None:
        for server in (self._https, self._plain):
            server.shutdown()
            server.server_close()
