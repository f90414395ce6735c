"""Issue 8: the opt-in token buckets (proxy/ratelimit.py), driven by an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import methods
from proxy.config.parse import parse_config
from proxy.config.schema import RateLimitRule, RateLimitsConfig
from proxy.errors import ConfigError
from proxy.model import MethodInfo
from proxy.ratelimit import SCOPES, RateLimiter

WS = methods.WORKFLOW_SERVICE_PREFIX


def method(short: str) -> MethodInfo:
    info = methods.lookup(WS + short)
    assert info is not None
    return info


DESCRIBE = method("DescribeNamespace")  # namespace read
START = method("StartWorkflowExecution")  # namespace write
UPDATE_NS = method("UpdateNamespace")  # namespace admin
POLL = method("PollActivityTaskQueue")  # long poll (write)
LIST_NS = method("ListNamespaces")  # cluster read, no namespace


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(clock: Clock, **rules: Any) -> RateLimiter:
    fields: dict[str, Any] = {"enabled": True}
    for name, value in rules.items():
        fields[name] = (
            RateLimitRule(rate=value[0], burst=value[1]) if isinstance(value, tuple) else value
        )
    return RateLimiter(RateLimitsConfig(**fields), clock=clock)


def take(
    rl: RateLimiter, n: int, m: MethodInfo = DESCRIBE, subject: str = "a", ns: str = "default"
) -> list[str | None]:
    return [rl.check(m, subject, ns) for _ in range(n)]


def test_burst_then_refused_with_the_scope() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 3))
    assert take(rl, 3) == [None, None, None]
    assert rl.check(DESCRIBE, "a", "default") == "subject"
    assert rl.check(DESCRIBE, "a", "default") == "subject"  # stays refused without time


def test_refill_at_rate_and_capped_at_burst() -> None:
    clock = Clock()
    rl = limiter(clock, per_subject=(2.0, 4))
    assert take(rl, 4) == [None] * 4
    assert rl.check(DESCRIBE, "a", "default") == "subject"
    clock.advance(0.25)  # half a token
    assert rl.check(DESCRIBE, "a", "default") == "subject"
    clock.advance(0.25)  # now one whole token (0.5 s * 2/s), the refused call took nothing
    assert rl.check(DESCRIBE, "a", "default") is None
    assert rl.check(DESCRIBE, "a", "default") == "subject"
    clock.advance(3600)  # a long idle time refills to the burst, never beyond
    assert take(rl, 4) == [None] * 4
    assert rl.check(DESCRIBE, "a", "default") == "subject"


def test_fractional_tokens_accumulate() -> None:
    clock = Clock()
    rl = limiter(clock, per_subject=(0.5, 1))
    assert rl.check(DESCRIBE, "a", "default") is None
    for _ in range(3):
        clock.advance(0.5)  # 0.25 token each
        assert rl.check(DESCRIBE, "a", "default") == "subject"
    clock.advance(0.5)  # 4 * 0.25 = 1 token
    assert rl.check(DESCRIBE, "a", "default") is None


@pytest.mark.parametrize(
    ("rate", "burst", "expected"), [(0.5, 0, 1), (5.0, 0, 5), (5.0, 2, 2), (1.0, 7, 7)]
)
def test_burst_zero_means_max_of_one_and_rate(rate: float, burst: int, expected: int) -> None:
    rl = limiter(Clock(), per_subject=(rate, burst))
    results = take(rl, expected + 1)
    assert results == [None] * expected + ["subject"]


def test_subjects_have_their_own_buckets() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 2))
    assert take(rl, 2, subject="a") == [None, None]
    assert rl.check(DESCRIBE, "a", "default") == "subject"
    assert take(rl, 2, subject="b") == [None, None]
    assert rl.check(DESCRIBE, "b", "default") == "subject"


def test_namespace_bucket_is_shared_by_subjects_and_separate_per_namespace() -> None:
    rl = limiter(Clock(), per_namespace=(1.0, 3))
    assert [rl.check(DESCRIBE, s, "default") for s in ("a", "b", "c")] == [None] * 3
    assert rl.check(DESCRIBE, "d", "default") == "namespace"
    assert rl.check(DESCRIBE, "d", "other") is None
    # A call without a namespace (cluster scope) has no namespace bucket.
    assert take(rl, 10, m=LIST_NS, ns="") == [None] * 10


def test_api_class_buckets_are_per_subject_and_per_class() -> None:
    rl = limiter(Clock(), reads=(1.0, 1), writes=(1.0, 2), admin=(1.0, 1))
    assert rl.check(DESCRIBE, "a", "default") is None
    assert rl.check(LIST_NS, "a", "") == "reads"  # same class, other method
    assert rl.check(DESCRIBE, "b", "default") is None  # other subject
    assert take(rl, 2, m=START) == [None, None]  # writes untouched by the reads
    assert rl.check(START, "a", "default") == "writes"
    assert rl.check(UPDATE_NS, "a", "default") is None
    assert rl.check(UPDATE_NS, "a", "default") == "admin"


def test_first_empty_bucket_in_order_names_the_scope() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 1), per_namespace=(1.0, 1), reads=(1.0, 1))
    assert rl.check(DESCRIBE, "a", "default") is None
    assert rl.check(DESCRIBE, "a", "default") == "subject"  # all three are empty
    assert rl.check(DESCRIBE, "b", "default") == "namespace"
    assert set(SCOPES) == {"subject", "namespace", "reads", "writes", "admin"}


def test_a_refused_call_takes_nothing_from_the_other_buckets() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 3), per_namespace=(1.0, 1))
    assert rl.check(DESCRIBE, "a", "default") is None  # subject 2 left, default 0 left
    for _ in range(5):
        assert rl.check(DESCRIBE, "a", "default") == "namespace"
    # The refusals did not drain the subject bucket: two calls elsewhere still pass.
    assert rl.check(DESCRIBE, "a", "other") is None
    assert rl.check(DESCRIBE, "a", "third") is None
    assert rl.check(DESCRIBE, "a", "fourth") == "subject"


def test_long_polls_are_exempt_by_default() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 1), writes=(1.0, 1))
    assert take(rl, 50, m=POLL) == [None] * 50
    # ... and a poll takes no token: the subject still has its one call.
    assert rl.check(START, "a", "default") is None
    assert rl.check(START, "a", "default") == "subject"


def test_long_polls_limited_when_not_exempt() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 2), exempt_long_polls=False)
    assert take(rl, 3, m=POLL) == [None, None, "subject"]


def test_no_rules_means_no_limit() -> None:
    rl = RateLimiter(RateLimitsConfig(enabled=True), clock=Clock())
    assert take(rl, 1000) == [None] * 1000
    rl = limiter(Clock(), per_subject=(0.0, 5))  # rate 0 disables a rule, whatever the burst
    assert take(rl, 100) == [None] * 100


def test_lru_bound_drops_the_least_recently_used_bucket() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 1), max_buckets=2)
    assert rl.check(DESCRIBE, "a", "default") is None
    assert rl.check(DESCRIBE, "b", "default") is None
    assert rl.check(DESCRIBE, "a", "default") == "subject"  # touches a: b is now the oldest
    assert rl.check(DESCRIBE, "c", "default") is None  # third bucket: b is dropped
    assert len(rl._buckets) == 2
    assert rl.check(DESCRIBE, "a", "default") == "subject"  # a kept its empty bucket
    # b starts over with a full bucket (the documented cost of the memory bound).
    assert rl.check(DESCRIBE, "b", "default") is None


def test_bucket_count_never_exceeds_the_bound() -> None:
    rl = limiter(Clock(), per_subject=(1.0, 1), per_namespace=(1.0, 100), max_buckets=50)
    for i in range(500):
        rl.check(DESCRIBE, f"s{i}", f"ns{i % 7}")
        assert len(rl._buckets) <= 50


def _config(rate_limits: dict[str, Any]) -> RateLimitsConfig:
    raw = {
        "upstream": {"address": "127.0.0.1:7233"},
        "authorization": {"authorizer": "noop", "claimMapper": "noop"},
        "rateLimits": rate_limits,
    }
    return parse_config(raw).rate_limits


def test_config_keys() -> None:
    cfg = _config(
        {
            "enabled": True,
            "perSubject": {"rate": 2.5, "burst": 5},
            "perNamespace": {"rate": 100},
            "reads": {"rate": 1, "burst": 1},
            "writes": {"rate": 3},
            "admin": {"rate": 0.1, "burst": 2},
            "exemptLongPolls": False,
            "maxBuckets": 10,
        }
    )
    assert cfg.enabled is True
    assert cfg.per_subject == RateLimitRule(rate=2.5, burst=5)
    assert cfg.per_namespace == RateLimitRule(rate=100.0, burst=0)
    assert cfg.reads == RateLimitRule(rate=1.0, burst=1)
    assert cfg.writes.rate == 3.0
    assert cfg.admin == RateLimitRule(rate=0.1, burst=2)
    assert cfg.exempt_long_polls is False
    assert cfg.max_buckets == 10
    default = _config({"enabled": True})
    assert default.exempt_long_polls is True
    assert default.per_subject.rate == 0


def test_config_rejects_a_zero_bucket_bound() -> None:
    with pytest.raises(ConfigError) as exc:
        _config({"enabled": True, "maxBuckets": 0})
    assert "rateLimits.maxBuckets" in str(exc.value)
