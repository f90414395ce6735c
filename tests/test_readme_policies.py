"""README "Fine-grained policies (Cedar)": every policy block validates against the shipped
schema, and every `explain` output shown is what `explain` prints for that policy set now.

`python tests/test_readme_policies.py` prints the outputs (to paste after a deliberate change).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.authz.policies import load_policies, load_schema  # noqa: E402
from proxy.config.parse import parse_config  # noqa: E402
from proxy.dev.pki import (  # noqa: E402
    generate_key,
    jwk_from_public_key,
    mint_token,
    private_key_pem,
)
from proxy.explain import explain, render  # noqa: E402

SECTION = "## Fine-grained policies (Cedar)"
KID = "readme"


@dataclass(frozen=True)
class Example:
    """One `explain` run of the README: the token's content and the call."""

    key: str
    subject: str
    permissions: tuple[str, ...]
    method: str
    namespace: str
    groups: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)


EXAMPLES = (
    Example(
        "dev-start-orders",
        "dev",
        ("orders:write",),
        "StartWorkflowExecution",
        "orders",
        attributes={"taskQueue": "orders"},
    ),
    Example(
        "bob-terminate",
        "bob",
        ("payments:write",),
        "TerminateWorkflowExecution",
        "payments",
        groups=("payments-dev",),
        attributes={"workflowId": "Payment-42"},
    ),
    Example(
        "alice-terminate",
        "alice",
        ("payments:write",),
        "TerminateWorkflowExecution",
        "payments",
        groups=("payments-oncall",),
        attributes={"workflowId": "Payment-42"},
    ),
    Example(
        "batch-start-orders",
        "batch-service",
        ("orders:write",),
        "StartWorkflowExecution",
        "orders",
        attributes={"taskQueue": "orders"},
    ),
    Example(
        "admin-delete-schedule",
        "carol",
        ("orders:admin",),
        "DeleteSchedule",
        "orders",
        groups=("orders-team",),
        attributes={"scheduleId": "nightly-report"},
    ),
    Example(
        "intern-describe",
        "ivan",
        ("orders:read",),
        "DescribeNamespace",
        "orders",
        groups=("interns",),
    ),
    Example(
        "intern-count",
        "ivan",
        ("orders:read",),
        "CountWorkflowExecutions",
        "orders",
        groups=("interns",),
    ),
    Example(
        "bob-decode",
        "bob",
        ("payments:write",),
        "Codec/Decode",
        "payments",
        groups=("payments-dev",),
    ),
)


def section() -> str:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, "README lacks the Cedar guide"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def cedar_blocks(text: str) -> list[str]:
    return re.findall(r"```cedar\n(.*?)```", text, flags=re.S)


def write_blocks(directory: Path, blocks: list[str]) -> list[str]:
    paths = []
    for i, block in enumerate(blocks):
        path = directory / f"readme-{i + 1}.cedar"
        path.write_text(block)
        paths.append(str(path))
    return paths


async def outputs(directory: Path) -> dict[str, str]:
    """Each example's `explain` text, against the README's policy set."""
    key = generate_key("rsa")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk_from_public_key(key.public_key(), KID, "RS256")]}))
    write_blocks(directory, cedar_blocks(section()))
    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:1"},
            "authorization": {
                "authorizer": "cedar",
                "claimMapper": "default",
                "jwtKeyProvider": {"keySourceURIs": [jwks.as_uri()]},
                "cedar": {
                    "policyFiles": [str(directory / "readme-*.cedar")],
                    "tokenClaims": ["groups"],
                },
            },
        }
    )
    pem = private_key_pem(key)
    out: dict[str, str] = {}
    for ex in EXAMPLES:
        token = mint_token(
            pem,
            kid=KID,
            subject=ex.subject,
            permissions=ex.permissions,
            extra_claims={"groups": list(ex.groups)} if ex.groups else None,
        )
        result = await explain(
            cfg,
            method=ex.method,
            namespace=ex.namespace,
            token=token,
            attributes=ex.attributes,
        )
        out[ex.key] = render(result, as_json=False)
    return out


def test_every_policy_block_validates_against_the_shipped_schema(tmp_path: Path) -> None:
    blocks = cedar_blocks(section())
    assert len(blocks) >= 8
    schema = load_schema("")
    for path in write_blocks(tmp_path, blocks):
        assert load_policies([path], schema).sources, path
    # And all together (ids are unique across the guide).
    whole = load_policies([str(tmp_path / "readme-*.cedar")], schema)
    assert len(whole.sources) == len(blocks) + 2  # examples 2 and 5 have two policies each


async def test_every_explain_output_is_what_explain_prints(tmp_path: Path) -> None:
    text = section()
    for key, output in (await outputs(tmp_path)).items():
        assert f"```text\n{output}\n```" in text, f"README output for {key} differs:\n{output}"
    assert text.count("```text\nmethod:") >= 6


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = '@id("x")\nforbid (principal, action == Temporal::Action::"NoSuch", resource);\n'
    with pytest.raises(Exception, match="x"):
        load_policies(write_blocks(tmp_path, [bad]), load_schema(""))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        for key, output in asyncio.run(outputs(Path(d))).items():
            print(f"=== {key}\n```text\n{output}\n```\n")
