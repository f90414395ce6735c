"""The Codec Server: payload crypto, request bounds, HTTP endpoints, the SDK PayloadCodec."""
