# -*- test-case-name: tests.control.test_limits -*-
"""Rate limits for the control socket: refused connects per uid and overall, and their log line.

An unauthorized peer can connect to a mode-0666 control socket as often as it likes;
each refusal costs a credentials lookup, an error frame and a log line. Token
buckets bound both, and the refusals beyond the limit are summarised in one line
("suppressed N") instead of one line each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take`` spends one if there is one."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class ConnectLimiter:
    """Admits unauthorized connects (to be answered) per uid and overall; the rest are dropped.

    Per-uid buckets idle long enough to be full again are forgotten, so the table
    stays as small as the set of uids active in the last ``burst / rate`` seconds.
    """

    per_uid_rate: float
    overall_rate: float
    burst: float = 5.0
    _overall: TokenBucket | None = None
    _by_uid: dict[int, TokenBucket] = field(default_factory=dict)

    def admit(self, uid: int, now: float) -> bool:
        if self._overall is None:
            self._overall = TokenBucket(self.overall_rate, max(self.burst, self.overall_rate))
        if len(self._by_uid) > 1024:
            refill = self.burst / self.per_uid_rate
            self._by_uid = {u: b for u, b in self._by_uid.items() if now - b.stamp < refill}
        bucket = self._by_uid.get(uid)
        if bucket is None:
            bucket = self._by_uid[uid] = TokenBucket(self.per_uid_rate, self.burst)
        return bucket.take(now) and self._overall.take(now)


@dataclass
class LogThrottle:
    """At most one line per ``interval`` seconds; the lines held back are counted into the next."""

    emit: Callable[[int], None]  # called with the number suppressed since the last line
    interval: float = 10.0
    _last: float | None = None
    _suppressed: int = 0

    def __call__(self, now: float) -> None:
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        self.emit(suppressed)
