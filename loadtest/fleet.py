"""A seeded synthetic fleet and its scenario: who sends what, when, with which token. Pure.

The fleet is shaped like Claude Code's telemetry: metrics every 60 s, log events in 5 s export
slots while the user is active, ``service.version`` on the resource and ``app.version`` on data
points, identity (``device.serial_number``) and ``team.id`` in the resource. Time is *fleet
time* (seconds from the start); the sender compresses it by ``Scenario.compression`` so an hour
of a fleet runs in minutes.

The hard cases are roles (see ``Role``) mixed into ordinary laptops. Every moment that the
pipeline could see on either side of an event (a token switch, a fix, the end of the rotation's
grace) is kept clear of the laptop's own sends by ``Scenario.margin``, so the ground truth does
not depend on a few milliseconds of scheduling.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Final, NamedTuple

from schemas.identity import endpoint_id
from schemas.policy import StaleTokenPolicy, TenantPolicy, ToolPolicy

CLAUDE: Final = "claude-code"
OTHER_TOOL: Final = "gemini-cli"

METRICS_EVERY: Final = 60.0  # OTEL_METRIC_EXPORT_INTERVAL of Claude Code
LOG_SLOT: Final = 5.0  # OTEL_LOGS_EXPORT_INTERVAL: a batch every 5 s while there are events
ACTIVITY: Final = 0.15  # share of 5 s slots with events, on average
RETRY_EVERY: Final = (5.0, 10.0)  # a rejected laptop's next attempt, like an exporter's
NATURAL_RATE: Final = 1 / METRICS_EVERY + ACTIVITY / LOG_SLOT  # exports/s per tool per laptop

TEAMS: Final = ("platform", "payments", "mobile", "data", "security", "web")
# claude-code versions around the minimum 2.0.10 (and 2.1.0 after a policy raises it).
# PEP 440 decides: 2.0.10rc1 < 2.0.10 <= 2.0.10+local; "2.0.x-dev" and "latest" do not parse.
CLAUDE_VERSIONS: Final = (
    ("2.0.10", 10),
    ("2.0.12", 14),
    ("2.0.14", 14),
    ("2.1.0", 14),
    ("2.1.0+local", 3),
    ("2.0.10+local", 4),
    ("2.1.0rc2", 3),
    ("2.0.9", 8),
    ("2.0.9+local", 2),
    ("2.0.10rc1", 3),
    ("2.0.10-rc.1", 2),
    ("2.0.x-dev", 2),
    ("latest", 1),
)
OTHER_VERSIONS: Final = (("0.9.1", 3), ("0.10.0", 4), ("0.11.2", 4), ("0.11.0rc1", 1))
FIXED_VERSION: Final = "2.1.2"


class Role(StrEnum):
    """What a laptop does during the run besides sending telemetry."""

    REGULAR = "regular"
    QUIET = "quiet"  # stops sending before the policy change: only a re-evaluation reaches it
    FIXED = "fixed"  # starts drifted (version and/or team.id), fixed mid-run: must resolve
    STALE = "stale"  # keeps the rotated-away token, retrying every 5-10 s: stale, stays open
    STALE_FIXED = "stale_fixed"  # the same, then gets the new token: stale, then resolved
    STALE_BURST = "stale_burst"  # wakes with a burst of rejected exports, then the new token
    LATE = "late"  # threshold-1 rejected exports, then the new token: never stale


ROTATION_ROLES: Final = frozenset({Role.STALE, Role.STALE_FIXED, Role.STALE_BURST, Role.LATE})


@dataclass(frozen=True, slots=True)
class Tool:
    """One OTel tool on a laptop, before and (when fixed) after the fix."""

    service: str
    version: str
    team: str | None  # None: no team.id attribute; "": the attribute, empty
    fixed_version: str | None = None
    fixed_team: str | None = None


@dataclass(frozen=True, slots=True)
class Laptop:
    index: int
    tenant: str
    serial: str
    role: Role
    tools: tuple[Tool, ...]
    phase: float  # seconds into the first metrics interval
    switch_at: float | None  # fleet time it starts using the tenant's new token (None: never)
    wake_at: float | None  # STALE_BURST: when it wakes and flushes a burst with the old token
    fix_at: float | None  # fleet time its tools take their fixed version/team
    stop_at: float | None  # fleet time it stops sending (QUIET)

    @property
    def endpoint_id(self) -> str:
        return endpoint_id(self.tenant, self.serial)


class Send(NamedTuple):
    """One planned export. ``variant`` 1 = after the laptop's fix; ``new_token``: the tenant's
    rotated-in token (else its first one)."""

    at: float
    laptop: int
    seq: int
    tool: int
    signal: str  # "metrics" | "logs"
    new_token: bool
    variant: int
    accepted: bool  # what the pipeline must answer, by the token's state at ``at``


@dataclass(frozen=True, slots=True)
class Scenario:
    """The run's timeline in fleet seconds, and the tenants' policies before and after."""

    span: float  # fleet seconds the run covers
    compression: float  # fleet seconds per real second
    tenants: tuple[str, ...]
    rotated: tuple[str, ...]  # tenants whose token is rotated at ``rotate_at``
    rotate_at: float
    grace_ends: float
    fix_at: float
    quiet_at: float
    policy_at: float
    policies: dict[str, TenantPolicy] = field(hash=False)
    changed: dict[str, TenantPolicy] = field(hash=False)  # published at ``policy_at``
    margin: float = 0.0  # fleet seconds kept clear around a laptop's own events
    policy_guard: float = 0.0  # fleet seconds fixed laptops keep quiet after the policy change
    storm: bool = False  # every tenant rotated, five times the laggards

    def real(self, fleet_seconds: float) -> float:
        return fleet_seconds / self.compression

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.real(self.grace_ends - self.rotate_at))


MARGIN_REAL: Final = 0.75  # real seconds kept clear around events (scheduling jitter, polling)
# after a policy change, fixed laptops stay quiet this long (real seconds): `driftline run`
# polls its policy directory every second, so an export sent just after the change may still
# be judged by the old policy, and the first one of a fix would then resolve a flag twice
POLICY_GUARD_REAL: Final = 2.5


def policy_v1(tenant: str) -> TenantPolicy:
    return TenantPolicy(
        tenant=tenant,
        tools={
            CLAUDE: ToolPolicy(minimum_version="2.0.10"),
            OTHER_TOOL: ToolPolicy(minimum_version="0.10.0"),
        },
        stale_token=StaleTokenPolicy(threshold=3, window=timedelta(minutes=10)),
    )


def policy_v2(tenant: str, pattern: int) -> TenantPolicy:
    """The mid-run change: raise claude-code's minimum, lower it, or raise the other tool's."""
    v1 = policy_v1(tenant)
    tools = dict(v1.tools)
    if pattern % 3 == 0:
        tools[CLAUDE] = ToolPolicy(minimum_version="2.1.0")
    elif pattern % 3 == 1:
        tools[CLAUDE] = ToolPolicy(minimum_version="2.0.9")
    else:
        tools[OTHER_TOOL] = ToolPolicy(minimum_version="0.11.0")
    return v1.model_copy(update={"tools": tools})


def scenario(
    endpoints: int,
    rate: float,
    duration: float,
    tenants: tuple[str, ...],
    storm: bool = False,
    controls: bool = True,
) -> Scenario:
    """The timeline for ``endpoints`` laptops sending ``rate`` exports/s for ``duration`` s.

    Compression follows from the fleet's natural rate (about 3 exports per laptop-minute), so
    the generator sends ``rate`` on average. The first tenant's token is rotated at a quarter,
    its grace ends at a third, drifted laptops are fixed at half, quiet ones stop before the
    policy change at 0.7, and the last 20% leave time for every consequence to be seen.
    Without ``controls`` (a remote target: no token registry to rotate in, no policy directory
    to write) nobody is rotated and the policies stay as they are.
    """
    if endpoints < 1 or rate <= 0 or duration < 20:
        raise ValueError("need at least one endpoint, a positive rate and a 20 s duration")
    if not tenants:
        raise ValueError("need at least one tenant")
    if storm and not controls:
        raise ValueError("a rotation storm rotates tokens: it needs the token registry")
    natural = endpoints * NATURAL_RATE * 1.1  # about one laptop in ten runs a second tool
    compression = rate / natural
    span = duration * compression
    return Scenario(
        span=span,
        compression=compression,
        tenants=tenants,
        rotated=(tenants if storm else tenants[:1]) if controls else (),
        rotate_at=0.25 * span,
        grace_ends=0.35 * span,
        fix_at=0.5 * span,
        quiet_at=0.45 * span,
        policy_at=0.7 * span,
        policies={t: policy_v1(t) for t in tenants},
        changed={t: policy_v2(t, i) if controls else policy_v1(t) for i, t in enumerate(tenants)},
        margin=MARGIN_REAL * compression,
        policy_guard=POLICY_GUARD_REAL * compression,
        storm=storm,
    )


def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    values, weights = zip(*weighted, strict=True)
    chosen: str = rng.choices(values, weights)[0]
    return chosen


def _team(rng: random.Random) -> str | None:
    draw = rng.random()
    if draw < 0.05:
        return None
    if draw < 0.08:
        return ""
    return rng.choice(TEAMS)


def _serial(rng: random.Random) -> str:
    return "C02" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(9))


# Shares of each tenant's laptops given a role (at least one each where the tenant has room);
# the rotation's roles only in rotated tenants.
ROLE_SHARES: Final = ((Role.QUIET, 0.08), (Role.FIXED, 0.08))
ROTATION_SHARES: Final = (
    (Role.STALE, 0.04),
    (Role.STALE_FIXED, 0.04),
    (Role.STALE_BURST, 0.04),
    (Role.LATE, 0.03),
)


def _roles(rng: random.Random, count: int, rotated: bool, storm: bool = False) -> list[Role]:
    rotation = (
        tuple((role, share * 5) for role, share in ROTATION_SHARES) if storm else ROTATION_SHARES
    )
    shares = ROLE_SHARES + (rotation if rotated else ())
    roles: list[Role] = []
    for role, share in shares:
        roles += [role] * max(1, round(share * count))
    roles = roles[:count] + [Role.REGULAR] * max(0, count - len(roles))
    rng.shuffle(roles)
    return roles


def fleet(endpoints: int, sc: Scenario, seed: int = 7) -> list[Laptop]:
    """``endpoints`` laptops spread over the scenario's tenants, deterministic for a seed."""
    rng = random.Random(seed)
    per_tenant = {
        tenant: _roles(
            rng, len(range(n, endpoints, len(sc.tenants))), tenant in sc.rotated, sc.storm
        )
        for n, tenant in enumerate(sc.tenants)
    }
    laptops: list[Laptop] = []
    serials: set[str] = set()
    first_tenant_serials: list[str] = []
    taken: set[tuple[str, str]] = set()
    for index in range(endpoints):
        tenant = sc.tenants[index % len(sc.tenants)]
        serial = _serial(rng)
        while serial in serials:
            serial = _serial(rng)
        shared = rng.choice(first_tenant_serials) if first_tenant_serials else serial
        if tenant != sc.tenants[0] and rng.random() < 0.05 and (tenant, shared) not in taken:
            serial = shared  # the same laptop serial in two tenants: two endpoints
        else:
            serials.add(serial)
            if tenant == sc.tenants[0]:
                first_tenant_serials.append(serial)
        taken.add((tenant, serial))
        role = per_tenant[tenant][index // len(sc.tenants)]
        laptops.append(_laptop(rng, index, tenant, serial, role, sc))
    return laptops


def _laptop(
    rng: random.Random, index: int, tenant: str, serial: str, role: Role, sc: Scenario
) -> Laptop:
    rotated = tenant in sc.rotated
    team = _team(rng)
    version = _pick(rng, CLAUDE_VERSIONS)
    fixed_version = fixed_team = None
    if role is Role.FIXED:  # drifted on its version, its team.id or both; fixed mid-run
        drift = rng.choice(("version", "team", "both"))
        fixed_version, fixed_team = version, team or rng.choice(TEAMS)
        if drift != "team":
            version = rng.choice(("2.0.9", "2.0.10rc1", "2.0.x-dev"))
            fixed_version = rng.choice((FIXED_VERSION, "2.0.14"))
        if drift != "version":
            team = rng.choice((None, ""))
    tools = [Tool(CLAUDE, version, team, fixed_version, fixed_team)]
    if rng.random() < 0.1:
        other_team = team if rng.random() < 0.7 else None  # the second tool without team.id
        other = Tool(
            OTHER_TOOL,
            _pick(rng, OTHER_VERSIONS),
            other_team,
            "0.11.2" if role is Role.FIXED else None,
            fixed_team if role is Role.FIXED else None,
        )
        tools.append(other)
    switch_at = wake_at = None
    if rotated:
        m = sc.margin
        if role is Role.STALE_FIXED:
            switch_at = sc.fix_at + rng.uniform(0, 0.05 * sc.span)
        elif role is Role.STALE_BURST:
            wake_at = sc.grace_ends + m + rng.uniform(0, 0.05 * sc.span)
            switch_at = wake_at + 2 + m + rng.uniform(*RETRY_EVERY)
        elif role is Role.LATE:
            switch_at = None  # decided by its schedule: after its rejected attempts
        elif role is not Role.STALE:
            switch_at = rng.uniform(sc.rotate_at + m, max(sc.rotate_at + m, sc.grace_ends - m))
    return Laptop(
        index=index,
        tenant=tenant,
        serial=serial,
        role=role,
        tools=tuple(tools),
        phase=rng.uniform(0, METRICS_EVERY),
        switch_at=switch_at,
        wake_at=wake_at,
        fix_at=sc.fix_at + rng.uniform(0, 0.05 * sc.span) if role is Role.FIXED else None,
        stop_at=sc.quiet_at if role is Role.QUIET else None,
    )


def sends(laptop: Laptop, sc: Scenario, seed: int = 7) -> list[Send]:
    """Every export the laptop makes, in time order, with what the pipeline must answer."""
    rng = random.Random(f"{seed}/{laptop.index}")
    raw: list[tuple[float, int, str]] = []
    for tool_index, _ in enumerate(laptop.tools):
        offset = laptop.phase + tool_index * 7.0
        t = offset
        while t < sc.span:
            raw.append((t, tool_index, "metrics"))
            t += METRICS_EVERY
        slot = rng.uniform(0, LOG_SLOT)
        while slot < sc.span:
            if rng.random() < ACTIVITY:
                raw.append((slot, tool_index, "logs"))
            slot += LOG_SLOT
    raw.sort()
    rotated = laptop.tenant in sc.rotated
    m = sc.margin
    planned: list[tuple[float, int, str, bool]] = []  # (at, tool, signal, new_token)
    if not rotated or laptop.role not in ROTATION_ROLES:
        for at, tool, signal in raw:
            new = laptop.switch_at is not None and at >= laptop.switch_at
            planned.append((at, tool, signal, new))
    else:
        # Holders of the old token: ordinary telemetry until just before the grace ends, then
        # the attempts of an exporter whose token was rotated away, then (if it gets one) the
        # new token and ordinary telemetry again.
        planned += [(at, tool, s, False) for at, tool, s in raw if at < sc.grace_ends - m]
        attempts: list[float] = []
        if laptop.role is Role.STALE_BURST:
            assert laptop.wake_at is not None
            attempts = [laptop.wake_at]
            while len(attempts) < 4:  # one flush: four exports within about a second
                attempts.append(attempts[-1] + rng.uniform(0.05, 0.3))
            resume = laptop.switch_at
        else:
            t = sc.grace_ends + m + rng.uniform(0, 5)
            limit = sc.span if laptop.switch_at is None else laptop.switch_at - m
            if laptop.role is Role.LATE:
                count = 2  # threshold - 1
                limit = sc.span - 2 * m
            while t < limit:
                attempts.append(t)
                if laptop.role is Role.LATE and len(attempts) == count:
                    break
                t += rng.uniform(*RETRY_EVERY)
            resume = (
                attempts[-1] + m + rng.uniform(*RETRY_EVERY)
                if laptop.role is Role.LATE
                else laptop.switch_at
            )
        planned += [(at, 0, "logs", False) for at in attempts]
        if resume is not None:
            planned += [(at, tool, s, True) for at, tool, s in raw if at >= resume]
    result: list[Send] = []
    planned.sort()
    for at, tool, signal, new in planned:
        if laptop.stop_at is not None and at >= laptop.stop_at:
            break
        if laptop.fix_at is not None and abs(at - laptop.fix_at) < m:
            continue
        if laptop.switch_at is not None and abs(at - laptop.switch_at) < m:
            continue
        if laptop.fix_at is not None and -m <= at - sc.policy_at < sc.policy_guard:
            continue
        variant = int(laptop.fix_at is not None and at >= laptop.fix_at)
        accepted = (new and at > sc.rotate_at) or not rotated or at < sc.grace_ends
        result.append(Send(at, laptop.index, len(result), tool, signal, new, variant, accepted))
    return result


RESOURCE_KEYS: Final = (
    "service.name",
    "service.version",
    "os.type",
    "os.version",
    "host.arch",
    "device.serial_number",
)


def resource_attributes(laptop: Laptop, tool: int, variant: int) -> dict[str, str]:
    """The resource of one tool's exports (before the fix: variant 0, after: 1)."""
    spec = laptop.tools[tool]
    version = spec.fixed_version if variant and spec.fixed_version else spec.version
    team = spec.fixed_team if variant and spec.fixed_team else spec.team
    attributes = {
        "service.name": spec.service,
        "service.version": version,
        "os.type": "darwin",
        "os.version": "15.1",
        "host.arch": "arm64",
        "device.serial_number": laptop.serial,
    }
    if team is not None:
        attributes["team.id"] = team
    return attributes


def all_sends(laptops: list[Laptop], sc: Scenario, seed: int = 7) -> Iterator[Send]:
    """Every laptop's sends, merged in time order (lazily)."""
    import heapq

    return heapq.merge(*(sends(laptop, sc, seed) for laptop in laptops))
