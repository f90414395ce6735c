"""Config -> the Cedar authorizer (`authorization.authorizer: cedar`) and its policy reloader.

Startup loads the schema and every policy file and validates them: a file that does not parse
or validate is a `ConfigError` naming the file, the line and the policy id, so `serve` and
`check-config` both refuse it. Afterwards `PolicyReloader` re-reads the files when they change
(polled every `reloadInterval`) and on SIGHUP: build, validate, swap; a bad edit keeps the old
set, is logged (`policies_reload_failed`) and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.authz.cedar import CedarAuthorizer, Combine
from proxy.authz.policies import PolicyStore, ReloadOutcome, load_schema
from proxy.config.schema import Config
from proxy.interfaces import Authorizer, Logger
from proxy.methods import lookup_with_codec
from proxy.model import Result

__all__ = ["PolicyReloader", "build_cedar_authorizer", "build_policy_reloader"]


def build_cedar_authorizer(
    cfg: Config,
    *,
    default: Authorizer,
    observe: Callable[[Result], None] | None = None,
) -> CedarAuthorizer:
    """Load and validate the policies (raises ConfigError) and build the authorizer.

    `default` is Temporal's default authorizer, consulted first with `default-and-policy`."""
    c = cfg.authorization.cedar
    schema = load_schema(c.schema_file)
    store = PolicyStore([p for p in c.policy_files if p.strip()], schema)
    combine = Combine(c.combine)
    return CedarAuthorizer(
        store,
        combine=combine,
        default=default if combine is Combine.DEFAULT_AND_POLICY else None,
        # The Codec Server's operations are actions too (schema: "Codec/Decode", ...).
        lookup=lookup_with_codec,
        observe=observe,
    )


def build_policy_reloader(
    cfg: Config,
    authorizer: Authorizer,
    *,
    logger: Logger,
    on_loaded: Callable[[tuple[str, ...]], None] | None = None,
    on_reload: Callable[[bool], None] | None = None,
) -> PolicyReloader | None:
    """The reloader of a Cedar authorizer's policy files (None for other authorizers)."""
    if not isinstance(authorizer, CedarAuthorizer):
        return None
    return PolicyReloader(
        authorizer.store,
        interval=cfg.authorization.cedar.reload_interval,
        logger=logger,
        on_loaded=on_loaded,
        on_reload=on_reload,
    )


class PolicyReloader:
    """Reloads a PolicyStore off the event loop; one reload at a time."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        interval: float,
        logger: Logger,
        on_loaded: Callable[[tuple[str, ...]], None] | None = None,
        on_reload: Callable[[bool], None] | None = None,
    ) -> None:
        """`on_loaded(ids)`: a set became active (now, and after each good reload);
        `on_reload(ok)`: a reload was attempted."""
        self._store = store
        self._interval = interval
        self._log = logger
        self._on_loaded = on_loaded
        self._on_reload = on_reload
        self._lock = asyncio.Lock()
        self._loaded()

    def _loaded(self) -> None:
        if self._on_loaded is not None:
            self._on_loaded(tuple(s.id for s in self._store.current.sources))

    @property
    def store(self) -> PolicyStore:
        return self._store

    async def reload(self, *, force: bool = True) -> ReloadOutcome | None:
        """SIGHUP (`force`): always rebuild. Polling: only when a file changed."""
        async with self._lock:
            try:
                if not force and not await asyncio.to_thread(self._store.changed):
                    return None
                outcome = await asyncio.to_thread(self._store.reload)
            except Exception as exc:  # a bug must not end the app's TaskGroup (SIGHUP task)
                outcome = ReloadOutcome(
                    ok=False, generation=self._store.current.generation, error=repr(exc)
                )
        snapshot = self._store.current
        if outcome.ok:
            self._log.info(
                "policies_reloaded",
                generation=outcome.generation,
                policies=len(snapshot.sources),
                files=len(snapshot.files),
            )
        else:
            # The message names file, line and policy id; policies are config, not secrets.
            self._log.warning(
                "policies_reload_failed",
                error=outcome.error,
                file=outcome.file,
                line=outcome.line,
                policy_id=outcome.policy_id,
                generation=outcome.generation,
            )
        if self._on_reload is not None:
            self._on_reload(outcome.ok)
        if outcome.ok:
            self._loaded()
        return outcome

    async def run(self) -> None:
        """Poll for changed files every `interval` seconds (0: never; SIGHUP still reloads)."""
        if self._interval <= 0:
            return
        while True:
            await asyncio.sleep(self._interval)
            await self.reload(force=False)
