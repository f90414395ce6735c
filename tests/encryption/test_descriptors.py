"""The shipped descriptors load without temporalio, into a private pool, and refuse tampering."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from proxy.encryption import ApiDescriptors, UnsupportedMethodError

ROOT = Path(__file__).resolve().parents[2]


def test_runtime_does_not_import_temporalio() -> None:
    code = (
        "import sys\n"
        "from proxy.encryption import EncryptionPlan\n"
        "plan = EncryptionPlan.load()\n"
        "assert len(plan.methods) > 100, len(plan.methods)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'temporalio')\n"
        "assert not bad, bad\n"
        "print(plan.version.label())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("temporalio-")


def test_a_modified_set_is_refused() -> None:
    files = resources.files("proxy._pb")
    data = (files / "temporal_api.binpb").read_bytes()
    record = (files / "temporal_api.json").read_text()
    ApiDescriptors.load(data, record)  # the shipped pair loads
    with pytest.raises(UnsupportedMethodError, match="make protos"):
        ApiDescriptors.load(data[:-1], record)


def test_the_pool_is_private() -> None:
    from google.protobuf import descriptor_pool

    api = ApiDescriptors.load()
    desc = api.find_message("temporal.api.common.v1.Payload")
    assert desc is not None
    assert desc.file.pool is api.pool
    assert api.pool is not descriptor_pool.Default()
    assert api.find_message("no.such.Type") is None
