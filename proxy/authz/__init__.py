"""Authorizers: one per module (default.py: Temporal's default and noop; policy engines beside it).

Re-exports what callers used when this was the single module `proxy/authz.py`.
"""

from __future__ import annotations

from proxy.authz.default import DefaultAuthorizer, NoopAuthorizer, required_role

__all__ = ["DefaultAuthorizer", "NoopAuthorizer", "required_role"]
