"""Policy files: errors name file, line and id; reload swaps only a valid set."""

from __future__ import annotations

import os
from pathlib import Path

import cedarpy
import pytest

from proxy.authz.policies import (
    PolicyLoadError,
    PolicyStore,
    load_policies,
    load_schema,
    split_policies,
)
from proxy.errors import ConfigError

GOOD = """\
// read for everyone with a role
@id("read")
permit(principal, action in Temporal::Action::"Read", resource);

forbid(principal, action == Temporal::Action::"DeleteSchedule", resource)
unless { principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("sre") };
"""


@pytest.fixture(scope="module")
def schema() -> cedarpy.Schema:
    return load_schema()


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_ids_come_from_annotations_or_file_and_position(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    _write(tmp_path / "a.cedar", GOOD)
    snapshot = load_policies([str(tmp_path / "*.cedar")], schema)
    assert [s.id for s in snapshot.sources] == ["read", "a.cedar#2"]
    assert [s.line for s in snapshot.sources] == [2, 5]
    assert snapshot.ids == {"policy0": "read", "policy1": "a.cedar#2"}
    assert snapshot.policy_ids(["policy1", "policy0"]) == ("a.cedar#2", "read")
    assert len(snapshot.policy_set) == 2


def test_split_keeps_semicolons_in_strings_and_comments() -> None:
    text = (
        '// a; comment\n@id("x;y")\npermit(principal, action, resource)\n'
        '  when { "a;b" == "a;b" };\n\nforbid(principal, action, resource);'
    )
    chunks = split_policies(text)
    assert [line for line, _ in chunks] == [2, 6]
    assert '"a;b"' in chunks[0][1]


def test_a_policy_that_does_not_parse_names_file_line_and_id(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    path = _write(
        tmp_path / "bad.cedar",
        GOOD + '\n\n@id("broken")\npermit(principal, action, resource) when { principal.x = 1 };\n',
    )
    with pytest.raises(PolicyLoadError) as info:
        load_policies([path], schema)
    error = info.value
    assert (error.file, error.line, error.policy_id) == (path, 9, "broken")
    assert f"{path}:9" in str(error)
    assert isinstance(error, ConfigError)
    assert error.path == "authorization.cedar.policyFiles"


def test_a_policy_that_does_not_validate_names_its_annotation(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    _write(tmp_path / "a.cedar", GOOD)
    path = _write(
        tmp_path / "b.cedar",
        '\n@id("typo")\n'
        'permit(principal, action == Temporal::Action::"StartWorkflow", resource);\n',
    )
    with pytest.raises(PolicyLoadError) as info:
        load_policies([str(tmp_path / "*.cedar")], schema)
    assert (info.value.file, info.value.line, info.value.policy_id) == (path, 2, "typo")
    assert "StartWorkflow" in str(info.value)
    assert "policy2" not in str(info.value)  # Cedar's positional id is not ours


def test_an_unguarded_optional_attribute_does_not_validate(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    path = _write(
        tmp_path / "c.cedar",
        'permit(principal, action == Temporal::Action::"StartWorkflowExecution", resource)\n'
        '  when { context.taskQueue like "batch-*" };\n',
    )
    with pytest.raises(PolicyLoadError) as info:
        load_policies([path], schema)
    assert (info.value.line, info.value.policy_id) == (1, "c.cedar#1")


def test_duplicate_ids_are_refused(tmp_path: Path, schema: cedarpy.Schema) -> None:
    _write(tmp_path / "a.cedar", GOOD)
    path = _write(tmp_path / "b.cedar", '@id("read")\nforbid(principal, action, resource);')
    with pytest.raises(PolicyLoadError, match="duplicate policy id") as info:
        load_policies([str(tmp_path / "*.cedar")], schema)
    assert (info.value.file, info.value.policy_id) == (path, "read")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("permit(?principal, action, resource);", "template"),
        ("permit(principal, action, resource)", "ParseError|unexpected|expected"),
    ],
)
def test_templates_and_unterminated_policies_are_refused(
    tmp_path: Path, schema: cedarpy.Schema, text: str, message: str
) -> None:
    path = _write(tmp_path / "t.cedar", text)
    with pytest.raises(PolicyLoadError, match=message):
        load_policies([path], schema)


def test_a_glob_that_matches_nothing_is_an_error(tmp_path: Path, schema: cedarpy.Schema) -> None:
    with pytest.raises(PolicyLoadError, match="matches no file"):
        load_policies([str(tmp_path / "*.cedar")], schema)


def test_a_bad_schema_file_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.cedarschema", "namespace T { entity X { a: Strin }; }")
    with pytest.raises(ConfigError) as info:
        load_schema(path)
    assert info.value.path == "authorization.cedar.schemaFile"
    with pytest.raises(ConfigError):
        load_schema(str(tmp_path / "missing"))


def test_reload_swaps_a_valid_edit(tmp_path: Path, schema: cedarpy.Schema) -> None:
    path = tmp_path / "a.cedar"
    _write(path, GOOD)
    store = PolicyStore([str(tmp_path / "*.cedar")], schema)
    first = store.current
    assert first.generation == 1
    assert not store.changed()
    _write(path, GOOD + '\n@id("more")\nforbid(principal, action, resource) when { false };\n')
    os.utime(path, ns=(1, 1))  # mtime granularity must not hide the edit
    assert store.changed()
    outcome = store.reload()
    assert outcome.ok and outcome.generation == 2
    assert store.current is not first
    assert [s.id for s in store.current.sources][-1] == "more"
    assert (store.reloads, store.failures) == (1, 0)
    assert not store.changed()


def test_a_bad_edit_keeps_the_old_set_and_is_counted(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    path = tmp_path / "a.cedar"
    _write(path, GOOD)
    store = PolicyStore([str(tmp_path / "*.cedar")], schema)
    first = store.current
    _write(path, GOOD + "permit(principal, action, resource) when { nope };\n")
    os.utime(path, ns=(2, 2))
    outcome = store.reload()
    assert not outcome.ok
    assert "a.cedar:7" in outcome.error
    assert outcome.generation == 1
    assert store.current is first
    assert (store.reloads, store.failures) == (0, 1)
    # The bad edit is not retried on every poll; a new edit is.
    assert not store.changed()
    _write(path, GOOD)
    os.utime(path, ns=(3, 3))
    assert store.changed()
    assert store.reload().ok
    assert store.current.generation == 2


def test_a_new_file_is_a_change(tmp_path: Path, schema: cedarpy.Schema) -> None:
    _write(tmp_path / "a.cedar", GOOD)
    store = PolicyStore([str(tmp_path / "*.cedar")], schema)
    _write(tmp_path / "b.cedar", "forbid(principal, action, resource) when { false };")
    assert store.changed()
    assert store.reload().ok
    assert store.current.files == (str(tmp_path / "a.cedar"), str(tmp_path / "b.cedar"))


def test_startup_errors_propagate(tmp_path: Path, schema: cedarpy.Schema) -> None:
    _write(tmp_path / "a.cedar", "permit(principal, action, resource) when { nope };")
    with pytest.raises(PolicyLoadError):
        PolicyStore([str(tmp_path / "*.cedar")], schema)


def test_the_benchmark_policy_set_validates(schema: cedarpy.Schema) -> None:
    path = Path(__file__).resolve().parent.parent / "bench" / "cedar" / "policies.cedar"
    snapshot = load_policies([str(path)], schema)
    assert len(snapshot.sources) == 20
    assert all(not s.id.startswith("policies.cedar#") for s in snapshot.sources)
