"""Suite-wide hooks."""

from __future__ import annotations

import os
import sys

import pytest

_exit_status: int | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # temporalio's native extension sometimes aborts during interpreter finalization after
    # all work succeeded (environment-facts §1: rc=134 in ~1 of 30 runs). The summary is
    # already printed here; leave without finalizing so CI judges the tests, not the teardown.
    if _exit_status is not None and "temporalio" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
