"""proxy/workers.py with real processes: the Supervisor runs as its own process (it owns
SIGTERM, as `serve` does) and spawns real workers running `worker` below."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from proxy.workers import prepare_metrics_dir, resolve_workers

REPO = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 10.0


# --------------------------------------------------------------------------------------------
# resolve_workers, prepare_metrics_dir


def test_resolve_workers_keeps_a_configured_count() -> None:
    assert resolve_workers(1) == 1
    assert resolve_workers(3) == 3


def test_resolve_workers_zero_means_one_per_cpu() -> None:
    assert resolve_workers(0) == (os.cpu_count() or 1)


def test_prepare_metrics_dir_removes_an_earlier_runs_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    stale = [tmp_path / "counter_4242.db", tmp_path / "gauge_livesum_4242.db"]
    for path in stale:
        path.write_bytes(b"\0" * 16)
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("not a sample file")
    assert prepare_metrics_dir() == str(tmp_path)
    assert not any(path.exists() for path in stale)
    assert unrelated.exists()


def test_prepare_metrics_dir_creates_the_configured_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(target))
    assert prepare_metrics_dir() == str(target)
    assert target.is_dir()


def test_prepare_metrics_dir_without_one_makes_a_fresh_dir_for_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # setenv first so that teardown restores the variable's original state, whatever it was.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    made = prepare_metrics_dir()
    try:
        assert Path(made).is_dir() and not list(Path(made).iterdir())
        # Spawned workers inherit the environment: this is how they find the dir.
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == made
    finally:
        shutil.rmtree(made)


# --------------------------------------------------------------------------------------------
# Supervisor


def worker(marks: str, behaviour: str, slot: int) -> None:
    """A stand-in for the proxy worker: reports readiness, drains on SIGTERM (or not)."""
    pid = os.getpid()
    if behaviour == "crash":
        raise SystemExit(3)

    def on_sigterm(_signum: int, _frame: object) -> None:
        Path(marks, f"sigterm-{pid}").touch()
        if behaviour == "stubborn":
            return  # keeps running: the supervisor must kill it after the grace period
        time.sleep(0.5)  # a drain that takes a while: the supervisor must wait for it
        Path(marks, f"drained-{pid}").touch()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    # A live gauge sample in the shared metrics dir, as a proxy worker has (inflight requests).
    from prometheus_client import CollectorRegistry, Gauge

    live = Gauge("tap_test_live", "test", registry=CollectorRegistry(), multiprocess_mode="livesum")
    live.set(1)
    Path(marks, f"ready-{slot}-{pid}").touch()
    deadline = time.monotonic() + 30.0  # bounded even if nobody stops it
    while time.monotonic() < deadline:
        time.sleep(0.05)


# The supervisor's process: like `serve` with listen.workers > 1, minus the proxy. Its logger
# writes one JSON object per event to a file the test reads.
DRIVER = """
import json, sys, time
from proxy.workers import Supervisor
from tests.test_workers import worker

events, marks, behaviour, count, grace = sys.argv[1:6]

class FileLog:
    def _write(self, level, event, **fields):
        line = {"level": level, "event": event, "t": time.monotonic(), **fields}
        with open(events, "a") as f:
            f.write(json.dumps(line) + "\\n")
    def info(self, event, **fields): self._write("info", event, **fields)
    def warning(self, event, **fields): self._write("warning", event, **fields)
    def error(self, event, **fields): self._write("error", event, **fields)

sys.exit(Supervisor(count=int(count), target=worker, args=(marks, behaviour),
                    grace_period=float(grace), logger=FileLog()).run())
"""


class Run:
    def __init__(self, tmp_path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.events_path = tmp_path / "events.jsonl"
        self.marks = tmp_path / "marks"
        self.metrics = tmp_path / "metrics"
        self.proc = proc

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        found = []
        for line in self.events_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line still being written
            if name is None or event["event"] == name:
                found.append(event)
        return found

    def ready_pids(self) -> dict[int, int]:
        """pid -> slot of every worker that got as far as installing its SIGTERM handler."""
        ready = (p.name.split("-") for p in self.marks.glob("ready-*"))
        return {int(pid): int(slot) for _, slot, pid in ready}

    def stop(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def supervisor(
    tmp_path: Path, *, behaviour: str, count: int, grace: float, stale: bool = False
) -> Iterator[Run]:
    marks, metrics = tmp_path / "marks", tmp_path / "metrics"
    marks.mkdir()
    metrics.mkdir()
    if stale:
        (metrics / "counter_4242.db").write_bytes(b"\0" * 16)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    cmd = [sys.executable, "-c", DRIVER, str(tmp_path / "events.jsonl"), str(marks), behaviour]
    proc = subprocess.Popen([*cmd, str(count), str(grace)], cwd=REPO, env=env)
    run = Run(tmp_path, proc)
    try:
        yield run
    finally:
        if proc.poll() is None:  # the test failed half-way: leave nothing running
            proc.kill()
            proc.wait(timeout=10)
        for pid in run.ready_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dead_worker_is_restarted_and_sigterm_drains_every_worker(tmp_path: Path) -> None:
    with supervisor(tmp_path, behaviour="drain", count=2, grace=5.0, stale=True) as run:
        wait_for("two ready workers", lambda: len(run.ready_pids()) == 2)
        started = {e["slot"]: e["pid"] for e in run.events("worker_started")}
        assert set(started) == {0, 1} and set(started.values()) == set(run.ready_pids())
        # The earlier run's samples are gone before the workers write theirs.
        assert not (run.metrics / "counter_4242.db").exists()
        dead, other = started[0], started[1]
        assert (run.metrics / f"gauge_livesum_{dead}.db").exists()

        os.kill(dead, signal.SIGKILL)
        wait_for("the restart", lambda: bool(run.events("worker_restarted")))
        [exited] = run.events("worker_exited")
        assert (exited["level"], exited["slot"], exited["pid"]) == ("error", 0, dead)
        assert exited["exitcode"] == -signal.SIGKILL
        [restarted] = run.events("worker_restarted")
        assert restarted["level"] == "warning" and restarted["slot"] == 0
        new = restarted["pid"]
        assert new not in (dead, other)
        wait_for("the new worker", lambda: run.ready_pids().get(new) == 0)
        # The dead worker's live gauges no longer count in /metrics; the others' still do.
        assert not (run.metrics / f"gauge_livesum_{dead}.db").exists()
        assert (run.metrics / f"gauge_livesum_{other}.db").exists()

        assert run.stop(timeout=15) == 0
        # Every live worker got SIGTERM, and the supervisor exited only after they drained.
        for pid in (new, other):
            assert (run.marks / f"sigterm-{pid}").exists(), pid
            assert (run.marks / f"drained-{pid}").exists(), pid
            assert not alive(pid)
        names = [e["event"] for e in run.events()]
        assert names[-2:] == ["draining", "stopped"]
        assert "worker_killed" not in names
        assert names.count("worker_exited") == 1  # a draining worker is not "dead"


def test_worker_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    grace = 0.5
    with supervisor(tmp_path, behaviour="stubborn", count=1, grace=grace) as run:
        wait_for("the worker", lambda: len(run.ready_pids()) == 1)
        [pid] = run.ready_pids()
        started = time.monotonic()
        assert run.stop(timeout=15) == 0
        took = time.monotonic() - started
        assert (run.marks / f"sigterm-{pid}").exists()
        [killed] = run.events("worker_killed")
        assert killed["pid"] == pid and killed["level"] == "error"
        assert not alive(pid)
        # Killed once the grace period (plus the fixed margin) is over, not before.
        assert grace < took < grace + 5.0 + 5.0
        draining = run.events("draining")[0]
        assert killed["t"] - draining["t"] >= grace


def test_worker_that_dies_at_once_is_restarted_at_most_once_a_second(tmp_path: Path) -> None:
    with supervisor(tmp_path, behaviour="crash", count=1, grace=1.0) as run:
        wait_for("three restarts", lambda: len(run.events("worker_restarted")) >= 3)
        assert run.stop(timeout=15) == 0
    exits = run.events("worker_exited")
    assert exits and all(e["exitcode"] == 3 for e in exits)
    times = [e["t"] for e in run.events("worker_restarted")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) > 0.8, gaps  # no CPU-spinning crash loop
