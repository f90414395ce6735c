"""constraints.txt (the lock) agrees with pyproject.toml, with the running venv, and is used.

The lock pins the whole dependency closure of pyproject.toml (runtime and every extra) to exact
versions; `make lock` (tools/lock.py) regenerates it. Offline: nothing here asks an index.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
LOCK = REPO / "constraints.txt"
# What `make venv` installs; other extras (bench) are checked only where installed.
INSTALLED_GROUPS = ("runtime", "test", "worker")
SYNC_HINT = "re-run `make lock` after editing pyproject.toml"
VENV_HINT = "sync the venv: pip install -c constraints.txt -e '.[test,worker]' (or `make venv`)"


def read_lock(path: Path) -> tuple[dict[str, Version], list[str]]:
    """Pins by canonical name, and every line that is not a single exact pin."""
    pins: dict[str, Version] = {}
    problems: list[str] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if not found:
            problems.append(f"lock line {number}: {line!r} is not name==version")
            continue
        name = canonicalize_name(found.group(1))
        try:
            version = Version(found.group(2))
        except InvalidVersion:
            problems.append(f"lock line {number}: {line!r} has no valid version")
            continue
        if name in pins:
            problems.append(f"lock line {number}: {name} is pinned twice")
        pins[name] = version
    return pins, problems


def direct_requirements(pyproject: Path) -> dict[str, list[Requirement]]:
    """pyproject's requirements by group: "runtime" and one group per extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    groups = {"runtime": project.get("dependencies", [])}
    groups.update(project.get("optional-dependencies", {}))
    own = canonicalize_name(project["name"])
    result: dict[str, list[Requirement]] = {}
    for group, reqs in groups.items():
        parsed = [Requirement(r) for r in reqs]
        result[group] = [r for r in parsed if canonicalize_name(r.name) != own]
    return result


def applies(req: Requirement, extras: Iterable[str]) -> bool:
    """Whether `req` is needed here (its marker, evaluated for each requested extra)."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (*extras, ""))


def pyproject_disagreements(pyproject: Path, lock: Path) -> list[str]:
    pins, problems = read_lock(lock)
    for group, reqs in direct_requirements(pyproject).items():
        for req in reqs:
            if not applies(req, [group]):
                continue
            name = canonicalize_name(req.name)
            pin = pins.get(name)
            if pin is None:
                problems.append(f"{group}: {req} is not in the lock")
            elif not req.specifier.contains(pin, prereleases=True):
                problems.append(f"{group}: the lock pins {name}=={pin}, outside {req}")
    return problems


def installed_disagreements(
    pyproject: Path, lock: Path, required_groups: Iterable[str] = INSTALLED_GROUPS
) -> list[str]:
    """Walk the installed closure of pyproject's requirements: every package must be locked and
    installed at its pinned version. Groups not in `required_groups` count only if installed."""
    pins, problems = read_lock(lock)
    required = set(required_groups)
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[Requirement, bool]] = []
    for group, reqs in direct_requirements(pyproject).items():
        todo.extend((r, group in required) for r in reqs if applies(r, [group]))
    while todo:
        req, must_exist = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if must_exist:
                problems.append(f"{name} ({req}) is not installed")
            continue
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{name} {dist.version} is installed but not in the lock")
        elif Version(dist.version) != pin:
            problems.append(f"{name} {dist.version} is installed, the lock pins {pin}")
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            if applies(sub_req, req.extras):
                todo.append((sub_req, must_exist))
    return problems


# --------------------------------------------------------------------------------------------
# The real files


def test_lock_is_exact_pins_only() -> None:
    pins, problems = read_lock(LOCK)
    assert not problems
    assert len(pins) > 20, "the whole closure, not just the direct dependencies"
    assert "generated by `make lock`" in LOCK.read_text().lower()


def test_lock_agrees_with_pyproject() -> None:
    problems = pyproject_disagreements(PYPROJECT, LOCK)
    assert not problems, f"{SYNC_HINT}:\n" + "\n".join(problems)


def test_running_venv_has_the_locked_versions() -> None:
    """So the suite (and CI) tests exactly what the lock says."""
    problems = installed_disagreements(PYPROJECT, LOCK)
    assert not problems, f"{VENV_HINT}:\n" + "\n".join(problems)


def test_installs_use_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    installs = [ln for ln in makefile.splitlines() if re.search(r"\bpip install\b", ln)]
    assert installs
    for line in installs:
        assert "-c $(LOCK)" in line, f"unpinned install in the Makefile: {line.strip()}"
    assert re.search(r"^LOCK\s*:=\s*constraints\.txt$", makefile, re.MULTILINE)
    # The venv is rebuilt when the lock changes, and `make lock` is the one command to update it.
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.MULTILINE)
    assert stamp and "$(LOCK)" in stamp.group(1).split()
    assert re.search(r"^lock:\n\t\$\(PYTHON\) tools/lock\.py$", makefile, re.MULTILINE)
    assert "make lock" in (REPO / "README.md").read_text()


# --------------------------------------------------------------------------------------------
# The checks can fail: edited copies of pyproject.toml and the lock


def edited(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, old
    target = tmp_path / source.name
    target.write_text(text.replace(old, new, 1))
    return target


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('"grpcio>=1.66"', '"grpcio>=999"', "runtime: the lock pins grpcio=="),
        ('"pytest>=8",', '"pytest>=8", "surely-not-locked>=1",', "test: surely-not-locked>=1"),
        ('worker = ["temporalio>=1.7"]', 'worker = ["temporalio<1.0"]', "worker: the lock pins"),
        ("[project.scripts]", 'new = ["nowhere-pkg"]\n\n[project.scripts]', "new: nowhere-pkg"),
    ],
)
def test_pyproject_edit_without_relock_is_caught(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    problems = pyproject_disagreements(edited(tmp_path, PYPROJECT, old, new), LOCK)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("\ngrpcio==", "\n# grpcio==", "runtime: grpcio>=1.66 is not in the lock"),
        ("\npytest==", "\npytest>=", "is not name==version"),
        ("\nstructlog==", "\nstructlog==1.0\nstructlog==", "structlog is pinned twice"),
    ],
)
def test_lock_edit_is_caught(tmp_path: Path, old: str, new: str, expected: str) -> None:
    problems = pyproject_disagreements(PYPROJECT, edited(tmp_path, LOCK, old, new))
    assert any(expected in p for p in problems), problems


def test_venv_drift_is_caught(tmp_path: Path) -> None:
    # A direct and a transitive dependency pinned to versions that are not installed.
    lock = edited(tmp_path, LOCK, "\npytest==", "\npytest==0.0.1\n# was ")
    lock = edited(tmp_path, lock, "\nmultidict==", "\nmultidict==0.0.1\n# was ")
    problems = installed_disagreements(PYPROJECT, lock)
    assert any(p.startswith("pytest ") and "the lock pins 0.0.1" in p for p in problems)
    assert any(p.startswith("multidict ") and "the lock pins 0.0.1" in p for p in problems)
    # A transitive dependency missing from the lock.
    lock = edited(tmp_path, LOCK, "\nidna==", "\n# idna==")
    problems = installed_disagreements(PYPROJECT, lock)
    assert any(p.startswith("idna ") and "not in the lock" in p for p in problems), problems


def test_missing_package_counts_only_for_installed_groups(tmp_path: Path) -> None:
    pyproject = edited(tmp_path, PYPROJECT, '"pytest>=8",', '"pytest>=8", "surely-not-installed",')
    assert "surely-not-installed (surely-not-installed) is not installed" in (
        installed_disagreements(pyproject, LOCK)
    )
    assert not installed_disagreements(pyproject, LOCK, required_groups=("runtime",))


def test_requirement_parsing_rejects_garbage(tmp_path: Path) -> None:
    pyproject = edited(tmp_path, PYPROJECT, '"grpcio>=1.66"', '"grpcio >>= 1"')
    with pytest.raises(InvalidRequirement):
        direct_requirements(pyproject)
