"""Verification key sets: Temporal's JWKS provider (jwks), identity-provider issuers (idp).

`fetch` holds the machinery both share (fetch with a timeout, keep the last good set, refresh
loop), `jwk` the JWK member parsing, `build` the construction from config.
"""
