"""Opt-in token buckets per subject, per namespace and per API class. Per process: with N
workers or replicas the effective limit is N times the configured one (README)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from proxy.config.schema import Config, RateLimitRule, RateLimitsConfig
from proxy.model import Access, MethodInfo

SCOPES = ("subject", "namespace", "reads", "writes", "admin")
_CLASS = {Access.READ: "reads", Access.WRITE: "writes", Access.ADMIN: "admin"}


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now


class RateLimiter:
    def __init__(self, cfg: RateLimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._rules: dict[str, tuple[float, float]] = {}
        for scope, rule in (
            ("subject", cfg.per_subject),
            ("namespace", cfg.per_namespace),
            ("reads", cfg.reads),
            ("writes", cfg.writes),
            ("admin", cfg.admin),
        ):
            if rule.rate > 0:
                self._rules[scope] = (rule.rate, _burst(rule))
        self._exempt_polls = cfg.exempt_long_polls
        self._max = cfg.max_buckets
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def check(self, method: MethodInfo, subject: str, namespace: str) -> str | None:
        """Take one token from every bucket that applies; the scope of an empty one, or None.

        A call refused by one bucket takes nothing from the others.
        """
        if not self._rules or (self._exempt_polls and method.polling):
            return None
        now = self._clock()
        keys: list[tuple[str, str]] = []
        if "subject" in self._rules:
            keys.append(("subject", subject))
        if "namespace" in self._rules and namespace:
            keys.append(("namespace", namespace))
        api_class = _CLASS.get(method.access)
        if api_class in self._rules:
            keys.append((api_class, subject))
        buckets = [(key, self._refill(key, now)) for key in keys]
        for (scope, _), bucket in buckets:
            if bucket.tokens < 1.0:
                return scope
        for _, bucket in buckets:
            bucket.tokens -= 1.0
        return None

    def _refill(self, key: tuple[str, str], now: float) -> _Bucket:
        rate, burst = self._rules[key[0]]
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)  # least recently used
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.last) * rate)
            bucket.last = now
        return bucket


def _burst(rule: RateLimitRule) -> float:
    return float(rule.burst) if rule.burst > 0 else max(1.0, rule.rate)


def build_rate_limiter(cfg: Config) -> RateLimiter | None:
    """`rateLimits`: the limiter, or None when it is off (the handler then checks nothing)."""
    return RateLimiter(cfg.rate_limits) if cfg.rate_limits.enabled else None
