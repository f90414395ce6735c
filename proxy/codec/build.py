"""Config -> the Codec Server's routes for the admin application (none when the codec is off)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import log as logmod
from proxy.authz.cedar import CedarAuthorizer
from proxy.codec.body import CodecLimits
from proxy.codec.http import codec_routes
from proxy.codec.payload import PayloadCodec
from proxy.config.schema import Config
from proxy.config.validate import (
    codec_requires_authorization,
    is_loopback_address,
    validate_codec_exposure,
)
from proxy.interfaces import Authorizer, ClaimMapper, Logger
from proxy.metrics import CodecMetrics


def build_codec_routes(
    cfg: Config,
    mapper: ClaimMapper,
    registry: CollectorRegistry,
    logger: Logger | None = None,
    *,
    authorizer: Authorizer | None = None,
    codec: PayloadCodec | None = None,
) -> list[web.RouteDef]:
    """`logger`: the app's (the process logger when not given). `authorizer`: the gRPC side's;
    a policy authorizer (Cedar) then decides the codec's operations too. Temporal's default,
    noop and plugins keep the codec's own role check. `codec`: the codec to serve (app passes a
    ReloadableCodec: SIGHUP rotates its keys)."""
    if not cfg.codec.enabled:
        return []
    log: Logger = logger if logger is not None else logmod.get_logger()
    # Again here: a Config built in code skips parse_config's validation.
    validate_codec_exposure(cfg)
    codec = codec or PayloadCodec.from_config(cfg.codec)
    if not codec_requires_authorization(cfg):
        log.warning(
            "codec_unauthenticated",
            address=cfg.admin.address,
            loopback=is_loopback_address(cfg.admin.address),
        )
    return codec_routes(
        codec,
        claim_mapper=mapper,
        require_authorization=codec_requires_authorization(cfg),
        cors=cfg.codec.cors,
        auth_header_name=cfg.authorization.auth_header_name,
        extra_header_name=cfg.authorization.auth_extra_header_name,
        audience=cfg.authorization.audience,
        limits=CodecLimits.from_config(cfg.codec),
        metrics=CodecMetrics(registry),
        path_prefix=cfg.codec.path_prefix,
        logger=log,
        authorizer=authorizer if isinstance(authorizer, CedarAuthorizer) else None,
    )
