"""Limits on what a rejected request can cost us, so garbage cannot amplify into Kafka."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def take(self, cost: float = 1.0) -> bool:
        if self._refill() < cost:
            return False
        self._tokens -= cost
        return True

    def has(self, cost: float) -> bool:
        """Whether ``cost`` could be taken now (nothing is taken)."""
        return self._refill() >= cost

    def charge(self, cost: float) -> None:
        """Take ``cost`` whatever is left, into debt: for work whose size is known only once
        it is done (a gRPC message is read whole before its size is known)."""
        self._refill()
        self._tokens -= cost


class KeyedBuckets:
    """A token bucket per key, least recently used keys evicted beyond `max_keys`."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def bucket(self, key: Hashable) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: Hashable, cost: float = 1.0) -> bool:
        return self.bucket(key).take(cost)
