"""Command line: the only place that touches argv and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from proxy import __version__
from proxy import log as logmod
from proxy.config.dump import derived_values, effective_config
from proxy.config.parse import load_config
from proxy.config.schema import Config
from proxy.errors import ConfigError

EXIT_OK = 0
EXIT_DENY = 1
EXIT_CONFIG = 2

_ROLE_WORDS = {
    "read": "read",
    "reader": "read",
    "write": "write",
    "writer": "write",
    "worker": "worker",
    "admin": "admin",
}


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


async def _build_and_close(cfg: Config) -> None:
    from proxy.app import build  # grpc is imported only by the commands that need it

    app = build(cfg, logger=logmod.get_logger())
    await app.pool.close(0)


def _builds(cfg: Config) -> bool:
    """Everything `serve` would build, validated without listening; errors go to stderr."""
    try:
        asyncio.run(_build_and_close(cfg))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return False
    return True


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logmod.configure(cfg.log.format, "error")
    if not _builds(cfg):
        return EXIT_CONFIG
    print(yaml.safe_dump(effective_config(cfg), sort_keys=False), end="")
    # stdout shows effective values; say on stderr which of them the file did not write.
    for key, why in derived_values(cfg).items():
        print(f"derived {key}: {why}", file=sys.stderr)
    print("config ok", file=sys.stderr)
    return EXIT_OK


async def _serve_one(cfg: Config, config_path: str | None = None) -> int:
    from proxy.app import build

    logger = logmod.get_logger()
    try:
        app = build(cfg, logger=logger)
        app.config_path = config_path  # SIGHUP re-reads encryption and codec.keys from it
        await app.start()
    except ConfigError as exc:
        logger.error("startup_failed", error=str(exc), path=exc.path)
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    await app.run()
    return EXIT_OK


def worker_main(config_path: str, slot: int) -> None:
    """Entry point of one spawned worker process."""
    cfg = load_config(config_path)
    logmod.configure_from(cfg.log)
    logmod.get_logger().info("worker_ready", slot=slot)
    raise SystemExit(asyncio.run(_serve_one(cfg, config_path)))


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logmod.configure_from(cfg.log)
    from proxy.workers import Supervisor, prepare_metrics_dir, resolve_workers

    count = resolve_workers(cfg.listen.workers)
    if count == 1:
        return asyncio.run(_serve_one(cfg, str(Path(args.config).resolve())))
    prepare_metrics_dir()
    # Validate once in the parent so a bad config fails fast instead of crash-looping workers.
    if not _builds(cfg):
        return EXIT_CONFIG
    supervisor = Supervisor(
        count=count,
        target=worker_main,
        args=(str(Path(args.config).resolve()),),
        grace_period=cfg.listen.shutdown_grace_period,
        logger=logmod.get_logger(),
    )
    return supervisor.run()


def cmd_certs_dev(args: argparse.Namespace) -> int:
    from proxy.dev.pki import ensure_dev_bundle, write_dev_bundle

    out = Path(args.out)
    bundle = write_dev_bundle(out) if args.force else ensure_dev_bundle(out)
    for path in bundle.files():
        print(path)
    return EXIT_OK


def _permissions(args: argparse.Namespace) -> list[str]:
    perms = list(args.permission or [])
    roles = args.role or []
    for ns in args.namespace or []:
        if not roles:
            raise ValueError("--namespace needs at least one --role")
        for role in roles:
            word = _ROLE_WORDS.get(role.lower())
            if word is None:
                raise ValueError(f"unknown role {role!r} (read, write, worker, admin)")
            perms.append(f"{ns}:{word}")
    if not perms:
        raise ValueError("give --namespace NS --role ROLE or --permission NS:ROLE")
    return perms


def cmd_dev_token(args: argparse.Namespace) -> int:
    from proxy.dev.pki import DevBundle, mint_token

    bundle = DevBundle.at(Path(args.certs))
    key_path = Path(args.key) if args.key else bundle.jwt_key
    try:
        perms = _permissions(args)
        key_pem = key_path.read_bytes()
        kid = args.kid or json.loads(bundle.jwks.read_text())["keys"][0]["kid"]
    except (ValueError, OSError, KeyError, IndexError) as exc:
        print(f"dev-token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    token = mint_token(
        key_pem,
        kid=kid,
        subject=args.subject,
        permissions=perms,
        ttl_seconds=args.ttl,
        audience=args.audience or None,
    )
    print(token)
    return EXIT_OK


def _attributes(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError("--attribute", f"expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logmod.configure(cfg.log.format, "critical")
    from proxy.explain import explain, render

    try:
        token = args.token or ""
        if args.token_file:
            token = Path(args.token_file).read_text().strip()
        cert = Path(args.cert).read_bytes() if args.cert else None
        result = asyncio.run(
            explain(
                cfg,
                method=args.method,
                namespace=args.namespace,
                token=token,
                cert_pem=cert,
                attributes=_attributes(args.attribute or []),
            )
        )
    except (ConfigError, OSError) as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(render(result, args.json))
    return EXIT_OK if result.allowed else EXIT_DENY


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="temporal-auth-proxy",
        description="mTLS, JWT and Temporal-exact authorization in front of a Temporal frontend.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the proxy")
    p.add_argument("--config", required=True, help="YAML config file")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config and print it (secrets redacted)")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "certs-dev", help="write a dev CA, certificates, a JWT signing key and a codec key"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="regenerate even if files exist")
    p.set_defaults(func=cmd_certs_dev)

    p = sub.add_parser("dev-token", help="mint a token signed by the dev key")
    p.add_argument("--namespace", action="append", help="namespace (repeatable)")
    p.add_argument("--role", action="append", help="read, write, worker or admin (repeatable)")
    p.add_argument("--permission", action="append", help="raw NS:ROLE entry (repeatable)")
    p.add_argument("--subject", default="dev-user")
    p.add_argument("--ttl", type=int, default=8 * 3600, help="seconds")
    p.add_argument("--audience", default="")
    p.add_argument("--certs", default="certs-dev", help="the certs-dev directory")
    p.add_argument("--key", default="", help="signing key PEM (default: CERTS/jwt.key)")
    p.add_argument("--kid", default="", help="key id (default: the first key in CERTS/jwks.json)")
    p.set_defaults(func=cmd_dev_token)

    p = sub.add_parser(
        "explain",
        help="the claims, rule and decision for one call (exit 0 allow, 1 deny, 2 error)",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--token", default="", help="a JWT (with or without 'Bearer ')")
    p.add_argument("--token-file", default="", help="a file holding the token")
    p.add_argument("--cert", default="", help="the client certificate (PEM) the caller presents")
    p.add_argument("--method", required=True, help="e.g. StartWorkflowExecution or a full path")
    p.add_argument("--namespace", default="")
    p.add_argument(
        "--attribute",
        action="append",
        help="a request attribute for policies, e.g. workflowId=Payment-1 (repeatable)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result)


if __name__ == "__main__":
    raise SystemExit(main())
