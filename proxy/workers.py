"""`listen.workers: N`: N spawned processes share the port (SO_REUSEPORT), supervised here.

A worker that dies is restarted and logged; SIGTERM is passed on and waited for. grpc must not
be forked once initialised, so workers are spawned, never forked.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from proxy.interfaces import Logger

POLL_SECONDS = 0.2
RESTART_BACKOFF_SECONDS = 1.0


def resolve_workers(configured: int) -> int:
    return configured if configured > 0 else (os.cpu_count() or 1)


def prepare_metrics_dir() -> str:
    """Set up PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client.

    Every worker writes its samples there; /metrics in any worker sums them all. Samples of an
    earlier run (or of the parent's config validation) must not be added to this one.
    """
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="tap-metrics-"
        )
    os.makedirs(metrics_dir, exist_ok=True)
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink()
    return metrics_dir


class Supervisor:
    def __init__(
        self,
        *,
        count: int,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        grace_period: float,
        logger: Logger,
    ) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._count = count
        self._target = target
        self._args = args
        self._grace = grace_period
        self._log = logger
        self._procs: dict[int, BaseProcess] = {}
        self._stopping = False

    def _spawn(self, slot: int) -> None:
        proc = self._ctx.Process(
            target=self._target, args=(*self._args, slot), name=f"worker-{slot}"
        )
        proc.start()
        self._procs[slot] = proc
        self._log.info("worker_started", slot=slot, pid=proc.pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _on_hup(self, signum: int, _frame: object) -> None:
        # Each worker reloads its own certificates and encryption settings.
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)

    def run(self) -> int:
        prepare_metrics_dir()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        for slot in range(self._count):
            self._spawn(slot)
        last_restart: dict[int, float] = {}
        while not self._stopping:
            time.sleep(POLL_SECONDS)
            for slot, proc in list(self._procs.items()):
                if proc.is_alive() or self._stopping:
                    continue
                self._log.error("worker_exited", slot=slot, pid=proc.pid, exitcode=proc.exitcode)
                if proc.pid is not None:
                    multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                # A worker that dies at once (bad port, bad files) must not spin the CPU.
                wait = last_restart.get(slot, 0.0) + RESTART_BACKOFF_SECONDS - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                last_restart[slot] = time.monotonic()
                self._spawn(slot)
                self._log.warning("worker_restarted", slot=slot, pid=self._procs[slot].pid)
        return self._shutdown()

    def _shutdown(self) -> int:
        self._log.info("draining", workers=len(self._procs), grace_period=self._grace)
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace + 5.0
        for proc in self._procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                self._log.error("worker_killed", pid=proc.pid)
                proc.kill()
                proc.join(5.0)
        self._log.info("stopped")
        return 0
