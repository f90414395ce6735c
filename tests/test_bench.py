"""The bench's own machinery, without load: importable, baseline checkout, pairing, ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is a directory of scripts, not a package

import baseline  # noqa: E402
import common  # noqa: E402
import run  # noqa: E402


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip()


@pytest.fixture
def tiny_repo(tmp_path: Path) -> tuple[Path, str]:
    """A two-commit repository; returns it and the first commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    ident = ("-c", "user.name=t", "-c", "user.email=t@example.invalid")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("VERSION = 1\n")
    git(repo, "add", "-A")
    git(repo, *ident, "commit", "-q", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "pkg" / "mod.py").write_text("VERSION = 2\n")
    (repo / "later.txt").write_text("only in the second commit\n")
    git(repo, "add", "-A")
    git(repo, *ident, "commit", "-q", "-m", "two")
    return repo, first


def test_checkout_exports_the_ref_tree_not_the_work_tree(
    tiny_repo: tuple[Path, str], tmp_path: Path
) -> None:
    repo, first = tiny_repo
    (repo / "pkg" / "mod.py").write_text("VERSION = 'uncommitted'\n")
    got = baseline.checkout(first[:7], tmp_path / "base", repo=repo)
    assert got.commit == first
    assert got.ref == first[:7]
    assert (got.source / "pkg" / "mod.py").read_text() == "VERSION = 1\n"
    assert not (got.source / "later.txt").exists()
    assert git(repo, "worktree", "list").count("\n") == 0  # nothing registered in the repo


def test_checkout_of_an_unknown_ref_fails(tiny_repo: tuple[Path, str], tmp_path: Path) -> None:
    repo, _ = tiny_repo
    with pytest.raises(subprocess.CalledProcessError):
        baseline.checkout("no-such-ref", tmp_path / "base", repo=repo)
    assert not (tmp_path / "base").exists()


def test_fit_config_drops_only_the_keys_the_baseline_rejects(tmp_path: Path) -> None:
    """The real round-start revision: it predates `listen.maxConcurrentCalls`."""
    try:
        git(common.REPO, "rev-parse", "--verify", baseline.BASELINE_REF + "^{commit}")
    except subprocess.CalledProcessError:
        pytest.skip(f"{baseline.BASELINE_REF} is not in this clone")
    base = baseline.checkout(baseline.BASELINE_REF, tmp_path / "base")
    pki = common.make_pki(tmp_path / "pki")
    cfg = common.proxy_config(
        pki, upstream="127.0.0.1:7233", port=7000, admin_port=7001, mode="default"
    )
    fitted, dropped = baseline.fit_config(cfg, base, tmp_path)
    assert "listen.maxConcurrentCalls" in dropped
    assert "maxConcurrentCalls" not in fitted["listen"]
    assert "maxConcurrentCalls" in cfg["listen"]  # the caller's config is untouched
    assert fitted["authorization"] == cfg["authorization"]
    assert fitted["tls"] == cfg["tls"]


def test_fit_config_raises_on_other_config_errors(tmp_path: Path) -> None:
    try:
        git(common.REPO, "rev-parse", "--verify", baseline.BASELINE_REF + "^{commit}")
    except subprocess.CalledProcessError:
        pytest.skip(f"{baseline.BASELINE_REF} is not in this clone")
    base = baseline.checkout(baseline.BASELINE_REF, tmp_path / "base")
    pki = common.make_pki(tmp_path / "pki")
    cfg = common.proxy_config(pki, upstream="127.0.0.1:7233", port=7000, admin_port=7001,
                              mode="default")  # fmt: skip
    cfg["listen"]["workers"] = "many"
    with pytest.raises(RuntimeError, match="rejects the bench config"):
        baseline.fit_config(cfg, base, tmp_path)


def test_front_groups_pair_each_front_with_its_baseline_twin() -> None:
    fronts = ["direct", "proxy-noop", "proxy-noop-base", "proxy", "proxy-base", "proxy-w2"]
    assert run.front_groups(fronts, "canned", "canned") == [
        ["direct"],
        ["proxy-noop", "proxy-noop-base"],
        ["proxy", "proxy-base"],
        ["proxy-w2"],
    ]
    # Upstreams without baseline cells run the current fronts alone; w2 is canned-only.
    assert run.front_groups(fronts, "temporal", "canned") == [
        ["direct"],
        ["proxy-noop"],
        ["proxy"],
    ]
    assert run.front_groups(["proxy-base"], "canned", "canned") == [["proxy-base"]]


def cell(front: str, repeat: int, cpu: float, p50: float) -> run.Cell:
    return run.Cell(
        upstream="canned",
        front=front,
        inflight=32,
        repeat=repeat,
        cpu_ms_per_call=cpu,
        p50_ms=p50,
        rps=1000.0,
    )


def test_compare_baseline_ratio_and_spread() -> None:
    cells = [
        cell("proxy", 0, 0.30, 1.0),
        cell("proxy-base", 0, 0.25, 1.0),
        cell("proxy-base", 1, 0.35, 2.0),
        cell("proxy", 1, 0.30, 1.0),
        cell("bare", 0, 9.0, 9.0),  # no twin: not compared
    ]
    [row] = run.compare_baseline(cells)
    assert (row["front"], row["inflight"], row["pairs"]) == ("proxy", 32, 2)
    cpu = row["cpu_ms_per_call"]
    assert (cpu["now"], cpu["base"], cpu["ratio"]) == (0.3, 0.3, 1.0)
    assert (cpu["ratio_min"], cpu["ratio_max"]) == (round(0.30 / 0.35, 3), 1.2)
    assert row["p50_ms"]["ratio"] == round(2.0 / 3.0, 3)
    md = "\n".join(run.baseline_section([row], {"baseline": {"ref": "abc", "commit": "abcdef"}}))
    assert "| canned | proxy | 32 | 2 | 0.300 | 0.300 | 1.00x (0.86..1.20) |" in md
