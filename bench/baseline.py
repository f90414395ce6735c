"""The proxy as it was at a baseline git revision, for before/after cells in one bench run.

`checkout` exports a revision's tree with `git archive` (no worktree registration, nothing
left in the repository); the proxy then runs from there with the shared venv's dependencies.
`fit_config` trims a config generated for today's proxy to the keys the baseline accepts,
asking the baseline itself (`check-config`), so no list of old keys is kept here.
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from common import PYTHON, REPO

# The commit this round started from: the "before" of every per-call CPU budget this round.
BASELINE_REF = "31d0b92"

_UNKNOWN = re.compile(r"config error: ([\w.\[\]]+): unknown key")


@dataclass(frozen=True)
class Baseline:
    ref: str
    commit: str
    source: Path  # put first on PYTHONPATH to run this revision's `python -m proxy`
    dropped_keys: tuple[str, ...] = ()


def checkout(ref: str, dest: Path, repo: Path = REPO) -> Baseline:
    """Export `ref`'s tree into `dest` (created, must not exist); returns the full commit."""
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    dest.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(repo), "archive", "--format=tar", commit], stdout=subprocess.PIPE
    )
    assert archive.stdout is not None
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    if archive.wait(timeout=60) != 0:
        raise RuntimeError(f"git archive {commit} failed ({archive.returncode})")
    return Baseline(ref=ref, commit=commit, source=dest)


def _drop(config: dict[str, Any], dotted: str) -> bool:
    node: Any = config
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if not isinstance(node, dict) or last not in node:
        return False
    del node[last]
    return True


def fit_config(
    config: dict[str, Any], baseline: Baseline, scratch: Path
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """`config` minus the keys `baseline` rejects as unknown (bounded: 20 rounds).

    Any other config error is raised: a baseline that cannot run the bench's config at all
    must not silently measure something else.
    """
    fitted: dict[str, Any] = yaml.safe_load(yaml.safe_dump(config))  # deep copy
    dropped: list[str] = []
    path = scratch / "baseline-check.yaml"
    for _ in range(20):
        path.write_text(yaml.safe_dump(fitted))
        out = subprocess.run(
            [PYTHON, "-m", "proxy", "check-config", "--config", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
            cwd=baseline.source, env=_env(baseline),
        )  # fmt: skip
        if out.returncode == 0:
            return fitted, tuple(dropped)
        match = _UNKNOWN.search(out.stderr + out.stdout)
        if match is None or not _drop(fitted, match.group(1)):
            raise RuntimeError(f"baseline {baseline.ref} rejects the bench config:\n{out.stderr}")
        dropped.append(match.group(1))
    raise RuntimeError(f"baseline {baseline.ref}: too many unknown keys ({dropped})")


def _env(baseline: Baseline) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(baseline.source)}
