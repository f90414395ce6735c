"""The command line as users run it: subprocesses, exit codes, printed output."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_certs_dev_then_the_make_run_config_checks_out(tmp_path: Path) -> None:
    certs = tmp_path / "certs-dev"
    made = run("certs-dev", "--out", str(certs))
    assert made.returncode == 0, made.stderr
    names = {Path(line).name for line in made.stdout.split()}
    assert {"ca.pem", "server.pem", "client.pem", "internode.pem", "jwt.key", "jwks.json"} <= names
    assert (certs / "jwt.key").stat().st_mode & 0o077 == 0
    # The exact config `make run` uses, with its ${TAP_ROOT} substitution.
    checked = run(
        "check-config", "--config", "deploy/dev/proxy.yaml", env={"TAP_ROOT": str(tmp_path)}
    )
    assert checked.returncode == 0, checked.stderr
    effective = yaml.safe_load(checked.stdout)
    assert effective["tls"]["frontend"]["server"]["requireClientAuth"] is True
    assert effective["authorization"]["claimMapper"] == "default"


def test_dev_token_is_verifiable_with_the_written_jwks(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert run("certs-dev", "--out", str(certs)).returncode == 0
    out = run(
        "dev-token",
        "--certs",
        str(certs),
        "--namespace",
        "default",
        "--role",
        "reader",
        "--permission",
        "temporal-system:admin",
        "--subject",
        "alice",
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    jwks = json.loads((certs / "jwks.json").read_text())
    key = jwt.PyJWK(jwks["keys"][0]).key
    claims = jwt.decode(token, key, algorithms=["RS256"])  # noqa: TID251 - independent check
    assert claims["sub"] == "alice"
    assert claims["permissions"] == ["temporal-system:admin", "default:read"]
    assert jwt.get_unverified_header(token)["kid"] == jwks["keys"][0]["kid"]
    bad = run("dev-token", "--certs", str(certs), "--namespace", "default", "--role", "boss")
    assert bad.returncode == 2 and "unknown role" in bad.stderr


def test_check_config_names_the_bad_key_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "upstream": {"address": "127.0.0.1:7233"},
                "authorization": {"claimMapper": "noop", "authorizer": "noop"},
                "tls": {
                    "frontend": {
                        "server": {
                            "certFile": str(tmp_path / "missing.pem"),
                            "keyFile": str(tmp_path / "missing.key"),
                        }
                    }
                },
            }
        )
    )
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 2
    assert "tls.frontend.server.certFile" in out.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("upstream: {address: 127.0.0.1:7233, adress: x}\n")
    out = run("check-config", "--config", str(unknown))
    assert out.returncode == 2 and "upstream.adress: unknown key" in out.stderr


def test_check_config_redacts_secrets(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert run("certs-dev", "--out", str(certs)).returncode == 0

    key_pem = (certs / "server.key").read_bytes()
    cfg = tmp_path / "inline.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "upstream": {"address": "127.0.0.1:7233"},
                "authorization": {"claimMapper": "noop", "authorizer": "noop"},
                "tls": {
                    "frontend": {
                        "server": {
                            "certFile": str(certs / "server.pem"),
                            "keyData": base64.b64encode(key_pem).decode(),
                        }
                    }
                },
            }
        )
    )
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "PRIVATE KEY" not in out.stdout
    assert base64.b64encode(key_pem).decode()[:40] not in out.stdout
    assert yaml.safe_load(out.stdout)["tls"]["frontend"]["server"]["keyData"] == "<redacted>"


def test_check_config_prints_effective_codec_authorization(tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    raw = {
        "upstream": {"address": "127.0.0.1:7233"},
        "admin": {"address": "127.0.0.1:9090"},
        "authorization": {"claimMapper": "noop", "authorizer": "noop"},
        "codec": {"enabled": True, "keys": {"k": key}, "encryptKeyId": "k"},
    }
    cfg = tmp_path / "codec.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    # The effective value, not `null`; stderr says it was derived, not written.
    assert yaml.safe_load(out.stdout)["codec"]["requireAuthorization"] is False
    assert "requireAuthorization: false" in out.stdout
    assert "derived codec.requireAuthorization: not set: false because" in out.stderr
    # The same file on a public admin address refuses, naming the key to set.
    raw["admin"] = {"address": "0.0.0.0:9090"}
    cfg.write_text(yaml.safe_dump(raw))
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 2 and out.stdout == ""
    assert "codec.allowUnauthenticated:" in out.stderr
    assert "set codec.allowUnauthenticated: true" in out.stderr
    raw["codec"]["allowUnauthenticated"] = True
    cfg.write_text(yaml.safe_dump(raw))
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["codec"]["allowUnauthenticated"] is True
    # An explicit value is printed as written and not reported as derived.
    raw["codec"]["requireAuthorization"] = False
    cfg.write_text(yaml.safe_dump(raw))
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 0 and "derived" not in out.stderr, out.stderr
