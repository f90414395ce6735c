"""protos/ and proxy/_pb: the committed generated modules are current, import with the installed
protobuf runtime, and our Payload messages are wire- and JSON-compatible with Temporal's."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor, descriptor_pb2, json_format, runtime_version
from temporalio.api.common.v1 import message_pb2 as temporal

from proxy._pb.temporal_auth_proxy.v1 import payload_pb2 as ours

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "proxy" / "_pb"
REGENERATE = ".venv/bin/python protos/generate.py"
_SERIALIZED = re.compile(r"AddSerializedFile\((b'.*?')\)", re.DOTALL)
_GENCODE_VERSION = re.compile(r"^# Protobuf Python Version: (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protos") / "_pb"
    # The documented command itself, not a reimplementation of it.
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _descriptors(root: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = {}
    for name, text in _files(root).items():
        if name.endswith("_pb2.py"):
            match = _SERIALIZED.search(text.decode())
            assert match, f"{name}: no serialized descriptor found"
            proto = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(match.group(1)))
            out[name] = proto
    return out


def test_committed_descriptors_match_the_protos(regenerated: Path) -> None:
    """The semantic check: holds across grpcio-tools versions."""
    assert _descriptors(COMMITTED) == _descriptors(regenerated), (
        f"proxy/_pb is stale: run `{REGENERATE}` and commit the result"
    )


def test_committed_modules_are_exactly_what_generate_writes(regenerated: Path) -> None:
    committed, fresh = _files(COMMITTED), _files(regenerated)
    assert sorted(committed) == sorted(fresh), f"run `{REGENERATE}`"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    hint = ""
    for name in stale:
        old = _GENCODE_VERSION.search(committed[name].decode())
        new = _GENCODE_VERSION.search(fresh[name].decode())
        if old and new and old.group(1) != new.group(1):
            hint = f" (committed by protoc for protobuf {old.group(1)}, now {new.group(1)})"
    assert not stale, f"stale generated files {stale}{hint}: run `{REGENERATE}`"


def test_gencode_version_is_supported_by_the_installed_runtime() -> None:
    text = (COMMITTED / "temporal_auth_proxy" / "v1" / "payload_pb2.py").read_text()
    match = _GENCODE_VERSION.search(text)
    assert match
    gencode = tuple(int(x) for x in match.group(1).split("."))
    runtime = (runtime_version.MAJOR, runtime_version.MINOR, runtime_version.PATCH)
    assert gencode <= runtime
    # And the import itself ran the runtime's own check.
    assert ours.Payload.DESCRIPTOR.full_name == "temporal_auth_proxy.v1.Payload"
    assert ours.Payload.__module__ == "proxy._pb.temporal_auth_proxy.v1.payload_pb2"


def _shape(message: descriptor.Descriptor) -> list[tuple[object, ...]]:
    """Everything that decides the wire and JSON form, recursively, without the package."""
    fields: list[tuple[object, ...]] = []
    for f in sorted(message.fields, key=lambda f: f.number):
        sub = f.message_type
        nested = (sub.name, _shape(sub)) if sub is not None and sub is not message else None
        fields.append((f.number, f.name, f.json_name, f.type, f.is_repeated, nested))
    return fields


@pytest.mark.parametrize("name", ["Payload", "Payloads"])
def test_messages_mirror_temporal(name: str) -> None:
    theirs = getattr(temporal, name).DESCRIPTOR
    mine = getattr(ours, name).DESCRIPTOR
    assert _shape(mine) == _shape(theirs)
    assert mine.file.package == "temporal_auth_proxy.v1"


def test_payloads_round_trip_between_temporal_and_ours() -> None:
    payload = temporal.Payload(
        metadata={"encoding": b"json/plain", "odd": b"\x00\xff"},
        data=b'{"a": 1}',
        external_payloads=[temporal.Payload.ExternalPayloadDetails(size_bytes=2**40)],
    )
    theirs = temporal.Payloads(payloads=[payload, temporal.Payload()])
    wire = theirs.SerializeToString(deterministic=True)
    mine = ours.Payloads.FromString(wire)
    assert mine.SerializeToString(deterministic=True) == wire
    assert json_format.MessageToDict(mine) == json_format.MessageToDict(theirs)
    back = json_format.ParseDict(json_format.MessageToDict(mine), temporal.Payloads())
    assert back == theirs


def test_shipped_temporal_api_descriptors_are_current(regenerated: Path) -> None:
    """proxy/_pb/temporal_api.binpb (payload encryption's field plans) is what the installed
    temporalio defines: an upgrade of temporalio without `make protos` fails here."""
    import json

    import temporalio

    record = json.loads((COMMITTED / "temporal_api.json").read_text())
    assert record["temporalio"] == temporalio.__version__, (
        f"temporal_api.binpb was generated from temporalio {record['temporalio']}, "
        f"{temporalio.__version__} is installed: run `{REGENERATE}`"
    )
    committed = descriptor_pb2.FileDescriptorSet.FromString(
        (COMMITTED / "temporal_api.binpb").read_bytes()
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(
        (regenerated / "temporal_api.binpb").read_bytes()
    )
    stale = sorted(
        {f.name for f in fresh.file} ^ {f.name for f in committed.file}
        | {f.name for f in fresh.file for g in committed.file if f.name == g.name and f != g}
    )
    assert not stale, f"stale Temporal API descriptors {stale[:5]}: run `{REGENERATE}`"
    assert (COMMITTED / "temporal_api.json").read_text() == (
        regenerated / "temporal_api.json"
    ).read_text()


def test_shipped_temporal_api_covers_the_services() -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        (COMMITTED / "temporal_api.binpb").read_bytes()
    )
    names = {f.name for f in fds.file}
    assert "temporal/api/workflowservice/v1/service.proto" in names
    assert "temporal/api/operatorservice/v1/service.proto" in names
    assert "google/rpc/status.proto" in names
    assert not [n for n in names if "/cloud/" in n]
