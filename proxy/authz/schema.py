"""The Cedar schema for Temporal, rendered from the method table, and the names it defines.

The shipped file `temporal.cedarschema` is this module's `render()` output (a test keeps the two
equal), so every forwarded method is an action and the action groups follow the table's scope
and access. Entity and action names here are the policy language users write; they are API.

- principal `Temporal::Caller::"<subject>"`: `subject`, `authType`, `systemRoles`, optional
  `certificate`, `claims` (a `Temporal::TokenClaims` entity whose tags are the token claims the
  config exposes, each a set of strings); the caller's tags are its roles per namespace
  (namespace name -> set of role names: worker, reader, writer, admin).
- resource `Temporal::Namespace::"<name>"` (attribute `name`; in `Temporal::Cluster::"cluster"`)
  for namespace-scope methods, `Temporal::Cluster::"cluster"` for cluster-scope ones.
- action `Temporal::Action::"<Method>"` for WorkflowService methods, `"OperatorService/<Method>"`,
  `"AdminService/<Method>"` (`"AdminService/unknown"` for names the table does not know) and
  `"Health/Check"` for the others, `"Codec/Encode"`, `"Codec/Decode"`, `"Codec/Download"` for
  the Codec Server (namespace write, read, read); groups `"NamespaceRead"` ...
  `"ClusterAdmin"`, themselves in `"Read"`/`"Write"`/`"Admin"` and `"Namespace"`/`"Cluster"`.
- context: the method's request attributes (methods.REQUEST_ATTRIBUTES), each optional.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

from proxy.methods import (
    ADMIN_SERVICE_PREFIX,
    CODEC_PREFIX,
    HEALTH_CHECK,
    OPERATOR_SERVICE_PREFIX,
    UNKNOWN_LABEL,
    WORKFLOW_SERVICE_PREFIX,
    all_methods,
    codec_methods,
    is_forwarded,
)
from proxy.model import Access, MethodInfo, Role, Scope

__all__ = [
    "CALLER",
    "CLUSTER",
    "CLUSTER_ID",
    "NAMESPACE",
    "ROLE_NAMES",
    "SCHEMA_FILE",
    "TOKEN_CLAIMS",
    "action_id",
    "group_id",
    "render",
    "shipped_schema",
]

SCHEMA_FILE = "temporal.cedarschema"
CALLER = "Temporal::Caller"
TOKEN_CLAIMS = "Temporal::TokenClaims"  # noqa: S105 - an entity type name
NAMESPACE = "Temporal::Namespace"
CLUSTER = "Temporal::Cluster"
CLUSTER_ID = "cluster"
ACTION = "Temporal::Action"

# Role bits as names, in Temporal's order (the default authorizer compares the numbers).
ROLE_NAMES: tuple[tuple[Role, str], ...] = (
    (Role.WORKER, "worker"),
    (Role.READER, "reader"),
    (Role.WRITER, "writer"),
    (Role.ADMIN, "admin"),
)

_ACCESS_NAMES = {Access.READ: "Read", Access.WRITE: "Write", Access.ADMIN: "Admin"}
_SCOPE_NAMES = {Scope.NAMESPACE: "Namespace", Scope.CLUSTER: "Cluster"}
_PREFIXES = (
    (WORKFLOW_SERVICE_PREFIX, ""),
    (OPERATOR_SERVICE_PREFIX, "OperatorService/"),
    (ADMIN_SERVICE_PREFIX, "AdminService/"),
    (CODEC_PREFIX, "Codec/"),
)


def action_id(info: MethodInfo) -> str:
    """The Cedar action id of a method ("" for one no forwarded call can be)."""
    if info.full_name == HEALTH_CHECK:
        return "Health/Check"
    for prefix, label in _PREFIXES:
        if info.full_name.startswith(prefix):
            return label + info.short_name
    return ""


def group_id(info: MethodInfo) -> str:
    """The action group of a method: scope and access, e.g. "NamespaceWrite"."""
    return _SCOPE_NAMES[info.scope] + _ACCESS_NAMES[info.access]


def _schema_methods(methods: Iterable[MethodInfo]) -> list[MethodInfo]:
    rows = [m for m in methods if is_forwarded(m.full_name)]
    # Any AdminService name is forwarded and authorized as cluster/admin; one action for all
    # the names the table does not know keeps the schema (and metric labels) closed.
    unknown_admin = MethodInfo(
        full_name=ADMIN_SERVICE_PREFIX + UNKNOWN_LABEL,
        short_name=UNKNOWN_LABEL,
        scope=Scope.CLUSTER,
        access=Access.ADMIN,
        namespace_field=None,
    )
    # The Codec Server's operations are decided by the same policies (namespace read/write).
    return [*rows, unknown_admin, *codec_methods()]


_HEADER = """\
// Cedar schema for temporal-auth-proxy: every forwarded Temporal API method is an action.
// Generated from proxy/methods.py by proxy/authz/schema.py; do not edit by hand.
namespace Temporal {
  // The verified client certificate of the call.
  type Certificate = {
    subject: String,
    commonName: String,
    organizationalUnits: Set<String>,
    dnsNames: Set<String>,
    uris: Set<String>,
    spiffeId?: String,
  };
  // Token claims exposed by config (authorization.cedar): tag name = claim, value = its strings.
  entity TokenClaims tags Set<String>;
  // The caller. Tags: namespace name -> roles there ("worker", "reader", "writer", "admin").
  entity Caller {
    subject: String,
    authType: String,
    systemRoles: Set<String>,
    certificate?: Certificate,
    claims: TokenClaims,
  } tags Set<String>;
  entity Cluster;
  entity Namespace in [Cluster] {
    name: String,
  };

  // Action groups: scope x access, and the rows and columns of that grid.
  action "Read", "Write", "Admin", "Namespace", "Cluster";
"""


def render(methods: Iterable[MethodInfo] | None = None) -> str:
    """The schema text for the method table (the shipped file is this, for all_methods())."""
    rows = _schema_methods(all_methods() if methods is None else methods)
    lines = [_HEADER]
    for scope in (Scope.NAMESPACE, Scope.CLUSTER):
        for access in (Access.READ, Access.WRITE, Access.ADMIN):
            lines.append(
                f'  action "{_SCOPE_NAMES[scope]}{_ACCESS_NAMES[access]}" '
                f'in ["{_ACCESS_NAMES[access]}", "{_SCOPE_NAMES[scope]}"];\n'
            )
    # One declaration per (group, context shape), methods in table order.
    shapes: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for info in rows:
        key = (group_id(info), tuple(name for name, _ in info.attributes))
        shapes.setdefault(key, []).append(action_id(info))
    for (group, attributes), actions in shapes.items():
        resource = "Namespace" if group.startswith("Namespace") else "Cluster"
        context = ", ".join(f"{name}?: String" for name in attributes)
        names = ",\n    ".join(f'"{a}"' for a in actions)
        lines.append(
            f'\n  action\n    {names}\n  in ["{group}"] appliesTo {{\n'
            f"    principal: Caller,\n    resource: {resource},\n"
            f"    context: {{{context}}},\n  }};\n"
        )
    lines.append("}\n")
    return "".join(lines)


def shipped_schema() -> str:
    """The schema shipped as package data (authorization.cedar.schemaFile: "")."""
    return resources.files("proxy.authz").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
