"""Fixtures for the encryption engine tests: the plan (built once) and keys."""

from __future__ import annotations

import os

import pytest

from proxy.codec.payload import KeyRing
from proxy.encryption import EncryptionPlan, NamespaceKeys


@pytest.fixture(scope="session")
def plan() -> EncryptionPlan:
    return EncryptionPlan.load()


@pytest.fixture(scope="session")
def ring() -> KeyRing:
    return KeyRing({"old": os.urandom(32), "new": os.urandom(32), "other": os.urandom(32)})


@pytest.fixture(scope="session")
def keys(ring: KeyRing) -> NamespaceKeys:
    """Encrypt with `new`; `old` still decrypts (rotation); `other` belongs to someone else."""
    return NamespaceKeys(ring=ring, encrypt_key_id="new", decrypt_key_ids=frozenset({"new", "old"}))
