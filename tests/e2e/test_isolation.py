"""Issue 14, items 6, 7 and 9 end to end: no isolation holes, against a real Temporal dev server
with 30 extra namespaces, real signed tokens and real client certificates."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.api.common.v1 import WorkflowType
from temporalio.api.operatorservice.v1 import DeleteNamespaceRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
    GetSystemInfoRequest,
    ListNamespacesRequest,
    ListNamespacesResponse,
    PollWorkflowTaskQueueRequest,
    PollWorkflowTaskQueueResponse,
    RespondWorkflowTaskCompletedRequest,
    StartWorkflowExecutionRequest,
)

from tests.e2e.rig import (
    Pki,
    ProxyProcess,
    TemporalDevServer,
    TLSTerminator,
    base_config,
    deep_merge,
    jwt_authorization,
    mtls_channel,
)

WS = "/temporal.api.workflowservice.v1.WorkflowService/"
OS = "/temporal.api.operatorservice.v1.OperatorService/"
NAMESPACES = tuple(f"iso-{i:02d}" for i in range(30))
READABLE = {n for i, n in enumerate(NAMESPACES) if i % 3 != 1} | {"default"}  # 21 of 33


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal-iso"), namespaces=NAMESPACES)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def many_terminator(pki: Pki, many: TemporalDevServer) -> Iterator[TLSTerminator]:
    term = TLSTerminator(pki, many.port)
    yield term
    term.stop()


def proxy_for(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, port: int, authorization: dict[str, Any]
) -> ProxyProcess:
    cfg = deep_merge(base_config(pki, port), {"authorization": authorization})
    return ProxyProcess(tmp_path_factory.mktemp("iso-proxy"), cfg)


@pytest.fixture(scope="module")
def filtering(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, many_terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    auth = jwt_authorization(pki, filterListNamespaces=True)
    proc = proxy_for(tmp_path_factory, pki, many_terminator.port, auth)
    yield proc
    proc.stop()


def call(
    ch: grpc.Channel, method: str, request: bytes, token: str | None = None
) -> tuple[grpc.StatusCode, bytes]:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    try:
        return grpc.StatusCode.OK, ch.unary_unary(method)(request, timeout=20, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code(), b""


def decode_token(token: bytes) -> tuple[int, str]:
    """The proxy's page token, decoded here by hand: magic, varint offset, UTF-8 name."""
    magic = b"tap-ns1\x00"
    assert token.startswith(magic), token
    offset = shift = 0
    pos = len(magic)
    while True:
        byte = token[pos]
        pos += 1
        offset |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return offset, token[pos:].decode()


def everything(server: TemporalDevServer) -> list[tuple[str, str]]:
    """(name, id) of every namespace, straight from the dev server."""
    out: list[tuple[str, str]] = []
    token = b""
    with grpc.insecure_channel(server.address) as direct:
        for _ in range(50):
            request = ListNamespacesRequest(page_size=100, next_page_token=token)
            raw = direct.unary_unary(WS + "ListNamespaces")(request.SerializeToString(), timeout=10)
            page = ListNamespacesResponse.FromString(raw)
            out += [(ns.namespace_info.name, ns.namespace_info.id) for ns in page.namespaces]
            token = page.next_page_token
            if not token:
                return out
    raise AssertionError("the dev server did not stop paging")


# ------------------------------------------------------------------ item 7: ListNamespaces


@pytest.mark.parametrize("page_size", [1, 2, 10])
def test_filtered_pages_hold_exactly_the_readable_namespaces(
    many: TemporalDevServer, filtering: ProxyProcess, pki: Pki, page_size: int
) -> None:
    listed = everything(many)
    assert {n for n, _ in listed} >= set(NAMESPACES) | {"default", "temporal-system"}
    hidden = [(n, i) for n, i in listed if n not in READABLE]
    assert len(hidden) >= 11
    token_text = pki.token(*(f"{n}:read" for n in sorted(READABLE)), subject="iso-lister")
    seen: list[str] = []
    sizes: list[int] = []
    page_token = b""
    with mtls_channel(pki, filtering.address) as ch:
        for _ in range(60):
            request = ListNamespacesRequest(page_size=page_size, next_page_token=page_token)
            code, raw = call(ch, WS + "ListNamespaces", request.SerializeToString(), token_text)
            assert code is grpc.StatusCode.OK
            page = ListNamespacesResponse.FromString(raw)
            seen += [ns.namespace_info.name for ns in page.namespaces]
            sizes.append(len(page.namespaces))
            page_token = page.next_page_token
            if not page_token:
                break
            # Every token decodes to what the caller has already seen, and holds no hidden
            # namespace's name or id.
            offset, after = decode_token(page_token)
            assert offset == len(seen) and after == seen[-1]
            for name, ns_id in hidden:
                # The SQL store's own cursor is the last row's id as 16 raw bytes.
                for secret in (name.encode(), ns_id.encode(), uuid.UUID(ns_id).bytes):
                    assert secret not in page_token, name
    assert len(seen) == len(set(seen)), "duplicates"
    assert set(seen) == READABLE
    # Page sizes count readable namespaces only: full pages, then the rest.
    assert sizes[:-1] == [page_size] * (len(sizes) - 1)
    assert sizes[-1] == len(READABLE) - page_size * (len(sizes) - 1) > 0


def test_a_foreign_page_token_is_refused(
    many: TemporalDevServer, filtering: ProxyProcess, pki: Pki
) -> None:
    ns_id = dict(everything(many))["iso-01"]
    reader = pki.token("iso-00:read", subject="iso-forger")
    with mtls_channel(pki, filtering.address) as ch:
        for token in (ns_id.encode(), b"garbage"):
            request = ListNamespacesRequest(page_size=1, next_page_token=token)
            code, _ = call(ch, WS + "ListNamespaces", request.SerializeToString(), reader)
            assert code is grpc.StatusCode.INVALID_ARGUMENT
        # A system reader is not filtered: Temporal's own paging, unchanged.
        system = pki.token("temporal-system:read", subject="iso-system")
        request = ListNamespacesRequest(page_size=1)
        code, raw = call(ch, WS + "ListNamespaces", request.SerializeToString(), system)
        assert code is grpc.StatusCode.OK
        assert not ListNamespacesResponse.FromString(raw).next_page_token.startswith(b"tap-ns1")


# ------------------------------------------------------------ item 6: the empty namespace


def test_a_role_on_the_empty_namespace_reaches_nothing_by_id(
    many: TemporalDevServer, filtering: ProxyProcess, pki: Pki
) -> None:
    ids = dict(everything(many))
    victim = ids["iso-29"]
    admin_on_empty = pki.token(":admin", subject="iso-empty-admin")
    read_on_empty = pki.token(":read", subject="iso-empty-reader")
    with mtls_channel(pki, filtering.address) as ch:
        delete = DeleteNamespaceRequest(namespace_id=victim).SerializeToString()
        assert call(ch, OS + "DeleteNamespace", delete, admin_on_empty)[0] is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        describe = DescribeNamespaceRequest(id=victim).SerializeToString()
        assert call(ch, WS + "DescribeNamespace", describe, read_on_empty)[0] is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # The same calls with a system role are Temporal's, unchanged.
        code, raw = call(ch, WS + "DescribeNamespace", describe, pki.token("temporal-system:read"))
        assert code is grpc.StatusCode.OK
        assert DescribeNamespaceResponse.FromString(raw).namespace_info.name == "iso-29"
        # The proxy still answers the token with its other roles.
        system_info = GetSystemInfoRequest().SerializeToString()
        assert call(ch, WS + "GetSystemInfo", system_info, admin_on_empty)[0] is (
            grpc.StatusCode.OK
        )
    assert "iso-29" in dict(everything(many))  # not deleted
    denials = [
        e
        for e in filtering.events()
        if e.get("event") == "authz_denied" and e.get("subject") == "iso-empty-admin"
    ]
    assert denials and denials[0]["reason"] == "insufficient_role"


def test_a_task_token_with_an_empty_namespace_needs_a_system_role(
    many: TemporalDevServer, filtering: ProxyProcess, pki: Pki
) -> None:
    queue = f"iso-tq-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(many.address) as direct:
        start = StartWorkflowExecutionRequest(
            namespace="iso-05",
            workflow_id=f"iso-{uuid.uuid4().hex[:8]}",
            workflow_type=WorkflowType(name="IsoNothing"),
            task_queue=TaskQueue(name=queue),
            request_id=str(uuid.uuid4()),
        )
        direct.unary_unary(WS + "StartWorkflowExecution")(start.SerializeToString(), timeout=10)
        poll = PollWorkflowTaskQueueRequest(namespace="iso-05", task_queue=TaskQueue(name=queue))
        raw = direct.unary_unary(WS + "PollWorkflowTaskQueue")(poll.SerializeToString(), timeout=30)
    task_token = PollWorkflowTaskQueueResponse.FromString(raw).task_token
    assert task_token
    complete = RespondWorkflowTaskCompletedRequest(task_token=task_token).SerializeToString()
    with mtls_channel(pki, filtering.address) as ch:
        writer_on_empty = pki.token(":write", "iso-06:write", subject="iso-empty-writer")
        assert call(ch, WS + "RespondWorkflowTaskCompleted", complete, writer_on_empty)[0] is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # The token is real: a system writer completes the task through the proxy.
        system = pki.token("temporal-system:write", subject="iso-system-writer")
        assert call(ch, WS + "RespondWorkflowTaskCompleted", complete, system)[0] is (
            grpc.StatusCode.OK
        )


# ------------------------------------------------------------- item 9: subject patterns


def issue(pki: Pki, directory: Path, stem: str, rdns: list[list[tuple[Any, str]]]) -> None:
    """A client certificate from the rig's CA whose subject is `rdns` (RFC 4514 order)."""
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(oid, v) for oid, v in rdn])
            for rdn in reversed(rdns)
        ]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(pki.ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(pki.ca.private_key, hashes.SHA256())  # type: ignore[arg-type]  # an EC CA key
    )
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pki.files[f"{stem}.pem"] = str(directory / f"{stem}.pem")
    pki.files[f"{stem}.key"] = str(directory / f"{stem}.key")


def test_a_subject_pattern_star_does_not_cross_an_escaped_separator(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, many_terminator: TLSTerminator
) -> None:
    certs = tmp_path_factory.mktemp("iso-certs")
    cn, org, uid = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.USER_ID
    issue(pki, certs, "iso-alice", [[(cn, "alice")], [(org, "Acme")]])
    issue(pki, certs, "iso-mallory", [[(cn, "mallory,O=Acme")]])
    issue(pki, certs, "iso-plus", [[(cn, "w+O=Acme")]])
    issue(pki, certs, "iso-multi", [[(cn, "iso-07"), (uid, "42")], [(org, "Acme")]])
    auth = {
        "authorizer": "default",
        "claimMapper": "cert",
        "certificateRules": [
            {"subject": "CN=*,O=Acme", "grants": ["iso-00:read"]},
            {"subject": "CN=*+O=Acme", "grants": ["iso-00:read"]},
            {"subject": "UID=42+CN=*,O=Acme", "grants": ["{1}:read"]},
        ],
    }
    proxy = proxy_for(tmp_path_factory, pki, many_terminator.port, auth)
    try:
        expected = {
            "iso-alice": ("iso-00", grpc.StatusCode.OK),
            "iso-mallory": ("iso-00", grpc.StatusCode.PERMISSION_DENIED),
            "iso-plus": ("iso-00", grpc.StatusCode.PERMISSION_DENIED),
            "iso-multi": ("iso-07", grpc.StatusCode.OK),
        }
        for stem, (namespace, code) in expected.items():
            with mtls_channel(pki, proxy.address, stem) as ch:
                describe = DescribeNamespaceRequest(namespace=namespace).SerializeToString()
                assert call(ch, WS + "DescribeNamespace", describe)[0] is code, stem
    finally:
        proxy.stop()
