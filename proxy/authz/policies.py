"""Cedar policy files: load, parse and validate against the schema; a reloadable holder.

Policy ids (what logs, metrics and `explain` show) come from the files, so the set of label
values is bounded by config: a policy's id is its `@id("...")` annotation, or
`<file name>#<n>` (n counts the file's policies from 1) when it has none. Ids must be unique
across all files. Errors name the file, the line where the policy starts and its id.

Reload is build, validate, swap: `PolicyStore.reload()` builds a new snapshot and swaps one
reference only when everything parsed and validated; otherwise the old set keeps serving and
the failure is counted. Each successful build gets a new generation, which decision caches key on.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import cedarpy

from proxy.authz.schema import shipped_schema
from proxy.errors import ConfigError

__all__ = [
    "PolicyLoadError",
    "PolicySnapshot",
    "PolicyStore",
    "ReloadOutcome",
    "load_policies",
    "load_schema",
    "split_policies",
]

POLICY_FILES_KEY = "authorization.cedar.policyFiles"
SCHEMA_FILE_KEY = "authorization.cedar.schemaFile"
_ID_ANNOTATION = re.compile(r'@id\s*\(\s*"([^"\\]*)"\s*\)')


class PolicyLoadError(ConfigError):
    """A policy file that cannot be read, parsed or validated; names file, line and policy id."""

    def __init__(self, message: str, *, file: str = "", line: int = 0, policy_id: str = ""):
        where = file + (f":{line}" if line else "")
        who = f" policy {policy_id!r}" if policy_id else ""
        super().__init__(POLICY_FILES_KEY, f"{where}{who}: {message}" if where else message)
        self.file = file
        self.line = line
        self.policy_id = policy_id


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySource:
    id: str
    file: str
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySnapshot:
    """One validated policy set. `ids` maps Cedar's positional ids (policy0...) to ours."""

    policy_set: cedarpy.PolicySet
    ids: Mapping[str, str]
    sources: tuple[PolicySource, ...]
    files: tuple[str, ...]
    generation: int

    def policy_ids(self, cedar_ids: Sequence[str]) -> tuple[str, ...]:
        """Our ids for Cedar's, sorted (so a log line or metric label is stable)."""
        return tuple(sorted(self.ids.get(i, i) for i in cedar_ids))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadOutcome:
    ok: bool
    generation: int
    error: str = ""
    # Where a failed reload failed (for the log line): file, line, policy id when known.
    file: str = ""
    line: int = 0
    policy_id: str = ""


def load_schema(path: str = "") -> cedarpy.Schema:
    """The schema file at `path`, or the shipped Temporal schema when `path` is ""."""
    try:
        if not path:
            return cedarpy.Schema.from_str(shipped_schema())
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return cedarpy.Schema.from_str(text)
    except OSError as exc:
        raise ConfigError(SCHEMA_FILE_KEY, f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(SCHEMA_FILE_KEY, f"{path or 'shipped schema'}: {exc}") from None


def split_policies(text: str) -> list[tuple[int, str]]:
    """Cut policy text into (start line, text) per policy, at `;` outside strings and comments.

    Cedar reports parse errors without a position, so each policy is parsed on its own to say
    where the bad one starts. Trailing text without `;` is returned as a last (bad) chunk.
    """
    chunks: list[tuple[int, str]] = []
    start = 0  # where the current chunk's text begins
    first = -1  # offset of its first significant character
    line = 1
    first_line = 1
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch in " \t\r":
            i += 1
            continue
        if ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if first < 0:
            first, first_line = i, line
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
            i += 1
            continue
        if ch == ";":
            chunks.append((first_line, text[start : i + 1]))
            start, first = i + 1, -1
        i += 1
    if first >= 0:
        chunks.append((first_line, text[start:]))
    return chunks


def _files(patterns: Sequence[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise PolicyLoadError(f"{pattern!r} matches no file")
        files.extend(f for f in matched if f not in files)
    return files


def load_policies(
    patterns: Sequence[str], schema: cedarpy.Schema, *, generation: int = 1
) -> PolicySnapshot:
    """Read, parse and validate every file the globs match. Raises PolicyLoadError."""
    texts: list[str] = []
    sources: list[PolicySource] = []
    seen: dict[str, PolicySource] = {}
    files = _files(patterns)
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyLoadError(f"cannot read: {exc}", file=path) from None
        for number, (line, chunk) in enumerate(split_policies(text), start=1):
            fallback = f"{os.path.basename(path)}#{number}"
            try:
                single = cedarpy.PolicySet.from_str(chunk)
                if single.templates():
                    raise ValueError("templates (?principal, ?resource) are not supported")
                policies = single.to_pst().static_policies
                if len(policies) != 1:
                    raise ValueError("expected one policy ending with ';'")
            except ValueError as exc:
                # Cedar cannot read the annotation of a policy it cannot parse; a plain
                # `@id("...")` is still the name the author knows it by.
                named = _ID_ANNOTATION.search(chunk)
                policy_id = named.group(1) if named else fallback
                raise PolicyLoadError(str(exc), file=path, line=line, policy_id=policy_id) from None
            annotated = next(iter(policies.values())).annotations.get("id")
            policy_id = annotated if annotated else fallback
            source = PolicySource(id=policy_id, file=path, line=line)
            if policy_id in seen:
                other = seen[policy_id]
                raise PolicyLoadError(
                    f"duplicate policy id (also at {other.file}:{other.line})",
                    file=path,
                    line=line,
                    policy_id=policy_id,
                )
            seen[policy_id] = source
            sources.append(source)
            texts.append(chunk)
    # Cedar numbers the policies of one text policy0, policy1, ... in order.
    full_text = "\n".join(texts)
    try:
        policy_set = cedarpy.PolicySet.from_str(full_text)
    except ValueError as exc:  # each chunk parsed alone, so this is unexpected
        raise PolicyLoadError(f"policies do not parse together: {exc}") from None
    if len(policy_set) != len(sources):
        raise PolicyLoadError(f"expected {len(sources)} policies, Cedar read {len(policy_set)}")
    ids = {f"policy{i}": s.id for i, s in enumerate(sources)}
    result = cedarpy.validate_policies(full_text, schema)
    if not result.validation_passed:
        error = result.errors[0]
        failing = sources[int(error.policy_id.removeprefix("policy"))] if error.policy_id else None
        message = (
            error.error.replace(f"`{error.policy_id}`", "") if error.policy_id else error.error
        )
        raise PolicyLoadError(
            f"does not validate against the schema: {message}"
            + (f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""),
            file=failing.file if failing else "",
            line=failing.line if failing else 0,
            policy_id=failing.id if failing else "",
        )
    return PolicySnapshot(
        policy_set=policy_set,
        ids=MappingProxyType(ids),
        sources=tuple(sources),
        files=tuple(files),
        generation=generation,
    )


def _fingerprint(files: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    marks: list[tuple[str, int, int]] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            marks.append((path, -1, -1))
        else:
            marks.append((path, st.st_mtime_ns, st.st_size))
    return tuple(marks)


class PolicyStore:
    """The current policy set; `reload()` builds, validates and swaps, or keeps the old one."""

    def __init__(self, patterns: Sequence[str], schema: cedarpy.Schema) -> None:
        self._patterns = tuple(patterns)
        self._schema = schema
        self._current = load_policies(self._patterns, schema)  # startup: errors propagate
        self._marks = self._current_marks()
        self.reloads = 0
        self.failures = 0

    @property
    def current(self) -> PolicySnapshot:
        return self._current

    @property
    def schema(self) -> cedarpy.Schema:
        return self._schema

    def _current_marks(self) -> tuple[tuple[str, int, int], ...]:
        try:
            files = _files(self._patterns)
        except PolicyLoadError:
            files = list(self._current.files)
        return _fingerprint(sorted(files))

    def changed(self) -> bool:
        """True when the globs match other files, or a file's mtime or size moved (cheap)."""
        return self._current_marks() != self._marks

    def reload(self) -> ReloadOutcome:
        """Build a new set from the files; swap it in only if it is whole and valid."""
        marks = self._current_marks()
        generation = self._current.generation + 1
        try:
            snapshot = load_policies(self._patterns, self._schema, generation=generation)
        except PolicyLoadError as exc:
            self.failures += 1
            self._marks = marks  # do not retry the same bad edit on every poll
            return ReloadOutcome(
                ok=False,
                generation=self._current.generation,
                error=str(exc),
                file=exc.file,
                line=exc.line,
                policy_id=exc.policy_id,
            )
        self._current = snapshot
        self._marks = marks
        self.reloads += 1
        return ReloadOutcome(ok=True, generation=generation)
