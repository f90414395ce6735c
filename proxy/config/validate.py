"""Whole-config checks that one key alone cannot make; errors name the key path."""

from __future__ import annotations

import ipaddress
import re

from proxy.config.schema import (
    AUTHORIZERS,
    CLAIM_MAPPERS,
    GRPC_MAX_SIZE,
    IDP_ALGORITHMS,
    WILDCARD,
    AuthorizationConfig,
    CedarConfig,
    Config,
    GroupTLSConfig,
    IdpConfig,
)
from proxy.errors import ConfigError

# An origin as browsers send it: scheme://host[:port] (a bracketed IPv6 host too).
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?"
)


def validate(cfg: Config) -> None:
    """Temporal's own rules plus ours; everything that needs no file access."""
    groups: list[tuple[str, GroupTLSConfig]] = [("tls.frontend", cfg.tls.frontend)]
    if cfg.tls.internode is not None:
        groups.append(("tls.internode", cfg.tls.internode))
    for gpath, g in groups:
        s, c = g.server, g.client
        pairs = (
            ("certFile", s.cert_file, "certData", s.cert_data),
            ("keyFile", s.key_file, "keyData", s.key_data),
            ("clientCaFiles", s.client_ca_files, "clientCaData", s.client_ca_data),
        )
        for a, av, b, bv in pairs:
            if av and bv:
                raise ConfigError(f"{gpath}.server.{a}", f"cannot specify both {a} and {b}")
        if c.root_ca_files and c.root_ca_data:
            raise ConfigError(
                f"{gpath}.client.rootCaFiles", "cannot specify both rootCaFiles and rootCaData"
            )
        has_cert = bool(s.cert_file or s.cert_data)
        has_key = bool(s.key_file or s.key_data)
        if has_key and not has_cert:
            raise ConfigError(
                f"{gpath}.server.certFile", "a key is configured without a certificate"
            )
        if has_cert and not has_key:
            raise ConfigError(
                f"{gpath}.server.keyFile", "a certificate is configured without a key"
            )
    fe = cfg.tls.frontend.server
    if fe.require_client_auth and not fe.enabled:
        raise ConfigError(
            "tls.frontend.server.requireClientAuth", "requires a server certificate and key"
        )
    if fe.require_client_auth and not (fe.client_ca_files or fe.client_ca_data):
        # Go would fall back to the system roots: anyone with a public certificate could connect.
        raise ConfigError(
            "tls.frontend.server.clientCaFiles",
            "requireClientAuth needs clientCaFiles or clientCaData",
        )
    if cfg.tls.internode is not None:
        c = cfg.tls.internode.client
        if c.disable_host_verification:
            raise ConfigError(
                "tls.internode.client.disableHostVerification",
                "is not supported: grpcio cannot skip certificate verification; "
                "set serverName instead",
            )
        if not c.enabled:
            raise ConfigError(
                "tls.internode.client", "needs rootCaFiles, rootCaData or forceTLS: true"
            )
    if not cfg.upstream.address:
        raise ConfigError("upstream.address", "is required (host:port of the Temporal frontend)")
    addresses = (
        ("listen.address", cfg.listen.address),
        ("upstream.address", cfg.upstream.address),
        ("admin.address", cfg.admin.address),
    )
    for key, value in addresses:
        _check_address(value, key)
    if cfg.upstream.channels < 1:
        raise ConfigError("upstream.channels", "must be at least 1")
    if cfg.listen.max_message_size < 1024:
        raise ConfigError("listen.maxMessageSize", "must be at least 1024 bytes")
    for key, size in (
        ("listen.maxMessageSize", cfg.listen.max_message_size),
        ("listen.maxHeaderListSize", cfg.listen.max_header_list_size),
    ):
        if size > GRPC_MAX_SIZE:
            raise ConfigError(key, f"must be at most {GRPC_MAX_SIZE} (grpc's limit)")
    for key, count in (
        ("listen.maxConcurrentStreams", cfg.listen.max_concurrent_streams),
        ("listen.maxConcurrentCalls", cfg.listen.max_concurrent_calls),
    ):
        # 0 would refuse every call; unlimited is what the attacks in SECURITY.md exploit.
        if not 1 <= count <= GRPC_MAX_SIZE:
            raise ConfigError(key, f"must be between 1 and {GRPC_MAX_SIZE}")
    az = cfg.authorization
    for key, value, names in (
        ("authorization.authorizer", az.authorizer, AUTHORIZERS),
        ("authorization.claimMapper", az.claim_mapper, CLAIM_MAPPERS),
    ):
        if value not in names and ":" not in value:
            raise ConfigError(
                key, f"unknown value {value!r} ({', '.join(names)} or module.path:Factory)"
            )
    if az.claim_mapper == "default" and not [
        u for u in az.jwt_key_provider.key_source_uris if u.strip()
    ]:
        raise ConfigError(
            "authorization.jwtKeyProvider.keySourceURIs",
            "claimMapper default needs at least one key source (or set claimMapper: noop)",
        )
    if not az.auth_header_name.strip():
        raise ConfigError("authorization.authHeaderName", "must not be empty")
    kp = az.jwt_key_provider
    _validate_ca(
        "authorization.jwtKeyProvider", kp.root_ca_files, kp.root_ca_data, kp.key_source_uris
    )
    validate_identity(cfg)
    _validate_cedar(az)
    if cfg.admin.tls.enabled and not (cfg.admin.tls.cert_file and cfg.admin.tls.key_file):
        raise ConfigError("admin.tls", "needs both certFile and keyFile")
    if cfg.admin.max_connections < 1:
        raise ConfigError("admin.maxConnections", "must be at least 1")
    for key, seconds in (
        ("admin.headerTimeout", cfg.admin.header_timeout),
        ("admin.bodyTimeout", cfg.admin.body_timeout),
        ("admin.idleTimeout", cfg.admin.idle_timeout),
    ):
        if seconds <= 0:
            raise ConfigError(key, "must be positive (an unbounded admin timeout is a DoS hole)")
    for key, length in (
        ("log.maxValueLength", cfg.log.max_value_length),
        ("audit.maxValueLength", cfg.audit.max_value_length),
    ):
        if length < 64:
            raise ConfigError(key, "must be at least 64")
    for key, burst in (
        ("log.repeatBurst", cfg.log.repeat_burst),
        ("audit.repeatBurst", cfg.audit.repeat_burst),
    ):
        if burst < 1:
            raise ConfigError(key, "must be at least 1")
    if cfg.audit.enabled and cfg.audit.sink == "file" and not cfg.audit.path:
        raise ConfigError("audit.path", "is required when audit.sink is file")
    if cfg.rate_limits.max_buckets < 3:
        # One call may touch three buckets; fewer would evict its own buckets.
        raise ConfigError("rateLimits.maxBuckets", "must be at least 3")
    if cfg.audit.enabled and cfg.audit.sink == "file" and cfg.listen.workers != 1:
        # Several processes rotating one file lose records; one sink per process is stdout.
        raise ConfigError("audit.sink", "file needs listen.workers: 1 (use stdout with workers)")
    if cfg.codec.enabled:
        if not cfg.codec.keys:
            raise ConfigError(
                "codec.keys", "at least one key is required when the codec is enabled"
            )
        # With namespaceKeys every namespace's current key is listed there; the shared
        # current key is then optional.
        codec = cfg.codec
        if (codec.encrypt_key_id or not codec.namespace_keys) and (
            codec.encrypt_key_id not in codec.keys
        ):
            raise ConfigError("codec.encryptKeyId", "must name one of codec.keys")
        for ns, kids in codec.namespace_keys.items():
            if not kids:
                raise ConfigError(f"codec.namespaceKeys.{ns}", "needs at least one key id")
            for i, kid in enumerate(kids):
                if kid not in codec.keys:
                    where = f"codec.namespaceKeys.{ns}" + (f"[{i}]" if len(kids) > 1 else "")
                    raise ConfigError(where, f"key id {kid!r} is not in codec.keys")
        for name, bound, low in (
            ("maxBodyBytes", codec.max_body_bytes, 1024),
            ("maxPayloads", codec.max_payloads, 1),
            ("maxJsonDepth", codec.max_json_depth, 4),  # {"payloads": [{"metadata": {}}]}
            ("maxConcurrentRequests", codec.max_concurrent_requests, 1),
        ):
            if bound < low:
                raise ConfigError(f"codec.{name}", f"must be at least {low}")
        validate_codec_exposure(cfg)
        for i, origin in enumerate(codec.cors.origins):
            # A browser sends `scheme://host[:port]` exactly: anything else never matches.
            if not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"codec.cors.origins[{i}]",
                    f"{origin!r} is not an origin: write scheme://host[:port], no path, "
                    "no trailing '/', no wildcard (e.g. https://temporal-ui.example.com)",
                )
        prefix = codec.path_prefix
        if prefix and (
            not prefix.startswith("/")
            or prefix.endswith("/")
            or "//" in prefix
            or any(c in prefix for c in "{}?#%\\ ")
        ):
            raise ConfigError(
                "codec.pathPrefix",
                "must be empty or a path such as /codec (leading /, no trailing /, "
                "no braces, ?, #, % or spaces)",
            )
    _validate_encryption(cfg)


def codec_requires_authorization(cfg: Config) -> bool:
    """`codec.requireAuthorization`, defaulting to "yes when JWT (or any claim mapper) is on"."""
    if cfg.codec.require_authorization is not None:
        return cfg.codec.require_authorization
    az = cfg.authorization
    has_jwt_keys = any(uri.strip() for uri in az.jwt_key_provider.key_source_uris)
    # A plugin claim mapper is fail-closed too: it exists to check credentials.
    return has_jwt_keys or az.claim_mapper != "noop"


def is_loopback_address(address: str) -> bool:
    """`host:port` binds loopback only: 127.0.0.0/8, ::1 or the name `localhost`.

    Any other name counts as exposed: it may resolve to anything."""
    host = address.rpartition(":")[0].strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def validate_codec_exposure(cfg: Config) -> None:
    """An unauthenticated codec off loopback is an open decrypt/encrypt oracle: opt in by name."""
    if (
        not cfg.codec.enabled
        or cfg.codec.allow_unauthenticated
        or codec_requires_authorization(cfg)
        or is_loopback_address(cfg.admin.address)
    ):
        return
    why = (
        "is false"
        if cfg.codec.require_authorization is False
        else "is not set and no JWT keys or claim mapper are configured"
    )
    raise ConfigError(
        "codec.allowUnauthenticated",
        f"codec.requireAuthorization {why}, so anyone who reaches admin.address "
        f"{cfg.admin.address} (not loopback) could decrypt and encrypt payloads; "
        "set codec.requireAuthorization: true with a claim mapper, bind admin.address to "
        "127.0.0.1, or set codec.allowUnauthenticated: true to serve it unauthenticated "
        "on purpose",
    )


def _validate_encryption(cfg: Config) -> None:
    """Every encrypted namespace names a key of `codec.keys` its Codec Server keys allow."""
    codec = cfg.codec
    for ns, nsc in cfg.encryption.namespaces.items():
        path = f"encryption.namespaces.{ns}"
        if not ns.strip() or ns == WILDCARD:
            raise ConfigError(path, "must name one namespace (not empty, not *)")
        if not nsc.key_id:
            raise ConfigError(f"{path}.keyId", "is required (a key id of codec.keys)")
        if nsc.key_id not in codec.keys:
            raise ConfigError(f"{path}.keyId", f"key id {nsc.key_id!r} is not in codec.keys")
        if codec.namespace_keys:
            allowed = codec.namespace_keys.get(ns, codec.namespace_keys.get(WILDCARD))
            if allowed is None:
                # The Codec Server could not decode this namespace's payloads for the UI/CLI.
                raise ConfigError(path, "codec.namespaceKeys gives this namespace no keys")
            if nsc.key_id not in allowed:
                raise ConfigError(
                    f"{path}.keyId",
                    f"key id {nsc.key_id!r} is not one of codec.namespaceKeys for {ns!r}",
                )


_CHAIN_MEMBERS = ("cert", "jwt", "idp")


def _validate_cedar(az: AuthorizationConfig) -> None:
    """The keys; the files themselves are loaded and validated by the authorizer's builder."""
    cedar = az.cedar
    if az.authorizer != "cedar":
        if cedar != CedarConfig():
            # Policies that are written but never consulted would be a silent hole.
            raise ConfigError(
                "authorization.cedar", "is set but authorization.authorizer is not cedar"
            )
        return
    if az.filter_list_namespaces:
        # The filtered listing is decided by roles alone: a policy forbidding ListNamespaces
        # would be bypassed for callers the roles deny (fail closed: refuse the pair).
        raise ConfigError(
            "authorization.filterListNamespaces",
            "cannot be combined with authorizer: cedar (the filtered listing follows roles, "
            "not policies); permit ListNamespaces with a Cedar policy instead",
        )
    if not [p for p in cedar.policy_files if p.strip()]:
        raise ConfigError(
            "authorization.cedar.policyFiles", "authorizer cedar needs at least one file"
        )
    for i, pattern in enumerate(cedar.policy_files):
        if not pattern.strip():
            raise ConfigError(f"authorization.cedar.policyFiles[{i}]", "must not be empty")
    for i, name in enumerate(cedar.token_claims):
        if not name.strip() or name != name.strip():
            raise ConfigError(
                f"authorization.cedar.tokenClaims[{i}]", "must be a claim name without spaces"
            )
    if len(set(cedar.token_claims)) != len(cedar.token_claims):
        raise ConfigError("authorization.cedar.tokenClaims", "lists a claim twice")
    if cedar.reload_interval < 0:
        raise ConfigError("authorization.cedar.reloadInterval", "must not be negative")


def identity_members(az: AuthorizationConfig) -> frozenset[str]:
    """The mappers `claimMapper` puts to use: cert, jwt (Temporal's default) and/or idp."""
    name = az.claim_mapper
    if name == "default":
        return frozenset({"jwt"})
    if name in ("cert", "idp"):
        return frozenset({name})
    if name != "chain":
        return frozenset()
    members = set(az.chain.members)
    if az.chain.mode == "cert-only":
        members &= {"cert"}
    elif az.chain.mode == "jwt-only":
        members -= {"cert"}
    return frozenset(members)


def validate_identity(cfg: Config) -> None:
    """claimMapper cert | chain | idp: the sections they read, checked before anything starts.

    Patterns, grants and key files are checked when the mappers are built (also at startup)."""
    az = cfg.authorization
    name = az.claim_mapper
    if name == "chain":
        members = az.chain.members
        for i, member in enumerate(members):
            if member not in _CHAIN_MEMBERS:
                raise ConfigError(
                    f"authorization.chain.members[{i}]",
                    f"unknown member {member!r} ({', '.join(_CHAIN_MEMBERS)})",
                )
        if len(set(members)) != len(members):
            raise ConfigError("authorization.chain.members", "lists a member twice")
        if "jwt" in members and "idp" in members:
            raise ConfigError(
                "authorization.chain.members", "use one token mapper: jwt or idp, not both"
            )
        mode = az.chain.mode
        has_token = "jwt" in members or "idp" in members
        if not members:
            raise ConfigError("authorization.chain.members", "must not be empty")
        if mode in ("cert-and-jwt", "cert-only") and "cert" not in members:
            raise ConfigError("authorization.chain.members", f"mode {mode} needs cert")
        if mode in ("cert-and-jwt", "jwt-only") and not has_token:
            raise ConfigError("authorization.chain.members", f"mode {mode} needs jwt or idp")
    used = identity_members(az)
    if (
        name == "chain"
        and "jwt" in used
        and not [u for u in az.jwt_key_provider.key_source_uris if u.strip()]
    ):
        raise ConfigError(
            "authorization.jwtKeyProvider.keySourceURIs",
            "chain member jwt (Temporal's default mapper) needs at least one key source",
        )
    if "cert" in used:
        if not az.certificate_rules:
            raise ConfigError(
                "authorization.certificateRules", f"claimMapper {name} needs at least one rule"
            )
        if not cfg.tls.frontend.server.require_client_auth:
            # grpcio cannot ask for an optional client certificate: without this there is none.
            raise ConfigError(
                "tls.frontend.server.requireClientAuth",
                f"claimMapper {name} maps client certificates: set requireClientAuth: true",
            )
    if "idp" in used:
        _validate_idp(az.idp)


def _validate_idp(idp: IdpConfig) -> None:
    if not idp.issuers:
        raise ConfigError("authorization.idp.issuers", "at least one issuer is required")
    seen: set[str] = set()
    for i, iss in enumerate(idp.issuers):
        path = f"authorization.idp.issuers[{i}]"
        if not iss.issuer:
            raise ConfigError(f"{path}.issuer", "is required")
        if iss.issuer in seen:
            raise ConfigError(f"{path}.issuer", f"{iss.issuer!r} is configured twice")
        seen.add(iss.issuer)
        remote = [
            k
            for k, v in (
                ("jwksUri", iss.jwks_uri),
                ("discovery", iss.discovery or iss.discovery_uri),
            )
            if v
        ]
        if len(remote) > 1:
            raise ConfigError(f"{path}.jwksUri", "give jwksUri or discovery, not both")
        if not remote and not iss.jwks_file and not iss.public_key_files:
            raise ConfigError(path, "needs keys: jwksUri, discovery, jwksFile or publicKeyFiles")
        for j, pk in enumerate(iss.public_key_files):
            if not pk.file:
                raise ConfigError(f"{path}.publicKeyFiles[{j}].file", "is required")
        if not [a for a in iss.audience if a.strip()]:
            raise ConfigError(
                f"{path}.audience",
                "at least one audience is required (tokens for other applications of the "
                "same identity provider must not pass)",
            )
        if not iss.algorithms:
            raise ConfigError(f"{path}.algorithms", "at least one algorithm is required")
        for j, alg in enumerate(iss.algorithms):
            if alg not in IDP_ALGORITHMS:
                raise ConfigError(
                    f"{path}.algorithms[{j}]",
                    f"{alg!r} is not allowed (one of {', '.join(IDP_ALGORITHMS)}; "
                    "HMAC and none never are)",
                )
        if iss.leeway > 600:
            raise ConfigError(f"{path}.leeway", "must be at most 10m")
        if not iss.subject_claim:
            raise ConfigError(f"{path}.subjectClaim", "must not be empty")
        if iss.fetch_timeout <= 0:
            raise ConfigError(f"{path}.fetchTimeout", "must be positive")
        remote_uri = iss.jwks_uri or iss.discovery_uri or (iss.issuer if iss.discovery else "")
        _validate_ca(path, iss.root_ca_files, iss.root_ca_data, (remote_uri,))
        if not iss.role_claims and not iss.permissions_claim:
            raise ConfigError(
                f"{path}.roleClaims", "map at least one claim (roleClaims or permissionsClaim)"
            )


def _validate_ca(
    path: str, files: tuple[str, ...], data: tuple[str, ...], uris: tuple[str, ...]
) -> None:
    """A key source's private CA: one form, and an https URI it can apply to."""
    if files and data:
        raise ConfigError(f"{path}.rootCaFiles", "cannot specify both rootCaFiles and rootCaData")
    key = "rootCaFiles" if files else "rootCaData"
    if (files or data) and not any(u.strip().lower().startswith("https://") for u in uris):
        # A CA that verifies nothing is a mistake: an http source would stay unauthenticated.
        raise ConfigError(f"{path}.{key}", "applies to https key sources, and none is configured")


def _check_address(value: str, path: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ConfigError(path, f"expected host:port, got {value!r}")
