"""Payload encryption at the proxy: the engine (plans from descriptors, seal/open per call).

The wiring (config, forward hooks, metrics, reload, explain) lives outside this package and calls
`EncryptionPlan.load()` once, a `NamespaceKeys` per encrypted namespace, then `encrypt_request`,
`decrypt_response` and `decrypt_status_details` per call. See README "Encryption at the proxy".
"""

from proxy.encryption.descriptors import ApiDescriptors, ApiVersion
from proxy.encryption.engine import (
    Decrypted,
    Encrypted,
    decrypt_message,
    decrypt_response,
    decrypt_status_details,
    encrypt_message,
    encrypt_request,
    find_unknown_fields,
)
from proxy.encryption.errors import (
    DecryptFailure,
    DecryptionError,
    EncryptionError,
    LimitExceededError,
    UnknownFieldError,
    UnsupportedMethodError,
)
from proxy.encryption.keys import NamespaceKeys
from proxy.encryption.plan import EncryptionPlan, MethodPlan

__all__ = [
    "ApiDescriptors",
    "ApiVersion",
    "DecryptFailure",
    "Decrypted",
    "DecryptionError",
    "Encrypted",
    "EncryptionError",
    "EncryptionPlan",
    "LimitExceededError",
    "MethodPlan",
    "NamespaceKeys",
    "UnknownFieldError",
    "UnsupportedMethodError",
    "decrypt_message",
    "decrypt_response",
    "decrypt_status_details",
    "encrypt_message",
    "encrypt_request",
    "find_unknown_fields",
]
