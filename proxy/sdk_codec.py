"""The documented import for SDK workers: `from proxy.sdk_codec import EncryptionCodec`.

The codec lives in `proxy.codec.sdk`; this name stays because the README and users' workers
import it.
"""

from proxy.codec.sdk import EncryptionCodec

__all__ = ["EncryptionCodec"]
