"""What refused requests may cost: the attribution budgets count bytes looked into, so a
rotation storm's small exports are all attributed while bombs stay bounded. No I/O."""

from __future__ import annotations

from pathlib import Path

from bus import MemoryBus
from ingest.attribution import PREFIX_BYTES
from ingest.ratelimit import TokenBucket
from ingest.service import Caller, IngestService
from ingest.tokens import Authenticator, TokenStore


class Clock:
    """Frozen time, moved by hand: counts are exact however slow the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _service(tmp_path: Path, clock: Clock | None = None) -> IngestService:
    TokenStore(tmp_path / "tokens.db").create("acme")
    return IngestService(
        Authenticator(tmp_path / "tokens.db"), MemoryBus(), monotonic=clock or Clock()
    )


def _caller(n: int) -> Caller:
    return Caller("http", f"10.0.{n // 250}.{n % 250}", ("Bearer dlt_retired",))


def test_a_rotation_storm_of_small_exports_is_attributed_whole(tmp_path: Path) -> None:
    """1,000 laptops behind 50 addresses send a 3 KB export each with a retired token, all in
    the same instant: every one may be looked into (counting requests, half were not)."""
    service = _service(tmp_path)
    allowed = sum(service.may_attribute(_caller(n % 50), 3_000) for n in range(1000))
    assert allowed == 1000


def test_bombs_from_one_address_get_fifty_prefixes_a_second(tmp_path: Path) -> None:
    clock = Clock()
    service = _service(tmp_path, clock)
    allowed = sum(service.may_attribute(_caller(0), PREFIX_BYTES) for _ in range(500))
    assert allowed == 50
    clock.now = 0.1  # a tenth of a second refills five
    assert sum(service.may_attribute(_caller(0), PREFIX_BYTES) for _ in range(500)) == 5


def test_bombs_from_many_addresses_get_five_hundred_prefixes_a_second(tmp_path: Path) -> None:
    clock = Clock()
    service = _service(tmp_path, clock)
    allowed = sum(service.may_attribute(_caller(n), PREFIX_BYTES) for n in range(5000))
    assert allowed == 500
    clock.now = 1.0  # a second later, another 500, whichever addresses ask
    more = sum(service.may_attribute(_caller(n), PREFIX_BYTES) for n in range(5000, 10000))
    assert more == 500


def test_tiny_bodies_are_charged_four_kib(tmp_path: Path) -> None:
    """Empty or 10-byte bodies are not free: one address gets 800 a second, not millions."""
    service = _service(tmp_path)
    allowed = sum(service.may_attribute(_caller(0), 10) for _ in range(5000))
    assert allowed == 800


def test_a_grpc_message_is_charged_its_size_once_read(tmp_path: Path) -> None:
    """gRPC reads a refused call's message whole (its size is unknown before): the read is
    allowed while the budget has room, and then charged in full, into debt if need be."""
    service = _service(tmp_path)
    caller = _caller(0)
    assert service.may_read_to_attribute(caller)
    service.read_to_attribute(caller, 4 * 1024 * 1024)  # a 4 MiB bomb: more than the budget
    assert not service.may_read_to_attribute(caller)  # that address waits it off
    assert service.may_read_to_attribute(_caller(1))  # others still have room


def test_a_bucket_in_debt_refills_before_it_allows_again() -> None:
    now = [0.0]
    bucket = TokenBucket(100, 100, clock=lambda: now[0])
    bucket.charge(300)  # 200 in debt
    assert not bucket.has(1)
    now[0] = 2.0
    assert not bucket.has(1)  # back to 0
    now[0] = 2.5
    assert bucket.has(50) and not bucket.has(51)
