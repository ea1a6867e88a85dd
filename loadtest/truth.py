"""Ground truth: the flag transitions the README's Detection rules demand of a planned fleet. Pure.

Written from the documented rules, not from the detectors' code:

- outdated_client: a tool's version below its tenant's ``minimum_version`` for that
  ``service.name`` (PEP 440 ordering), or one that does not parse.
- missing_policy: a required attribute (``team.id``) absent or empty.
- Both judge an endpoint on each of its tools' latest accepted snapshot, and a policy change
  re-evaluates every endpoint at once, heard from since or not.
- stale_token: ``threshold`` requests rejected with the rotated-away token within ``window``
  after the rotation; resolved by the endpoint's next accepted request (never by a policy).

Every expected transition names its trigger: the planned export that causes it, or the policy
change; the report measures time to flag from the moment that trigger was sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from packaging.version import InvalidVersion, Version

from loadtest.fleet import Laptop, Scenario, Send, resource_attributes, sends
from schemas.messages import FlagKind
from schemas.policy import TenantPolicy


class Cause(StrEnum):
    SEND = "send"
    POLICY = "policy"


@dataclass(frozen=True, slots=True)
class Transition:
    state: str  # "raised" | "resolved"
    at: float  # fleet seconds
    cause: Cause
    seq: int = -1  # the laptop's send that causes it (Cause.SEND)


Key = tuple[str, FlagKind]  # (endpoint_id, kind)


def _outdated(version: str, minimum: str | None) -> bool:
    if minimum is None:
        return False
    try:
        return Version(version) < Version(minimum)
    except InvalidVersion:
        return True


@dataclass(slots=True)
class _Endpoint:
    """What the rules read of one endpoint: each tool's latest accepted snapshot, rejections."""

    tools: dict[int, tuple[str, str, frozenset[str]]]  # tool → (service, version, present keys)
    rejections: list[float]  # real seconds, since the last accepted request
    open: dict[FlagKind, bool]


def expected(laptop: Laptop, sc: Scenario, planned: Iterable[Send]) -> dict[Key, list[Transition]]:
    """The transitions, per flag kind, of one laptop's endpoint over the run."""
    state = _Endpoint({}, [], dict.fromkeys(FlagKind, False))
    result: dict[Key, list[Transition]] = {}
    policy = sc.policies[laptop.tenant]
    events: list[tuple[float, int, Send | TenantPolicy]] = [(s.at, 1, s) for s in planned]
    events.append((sc.policy_at, 0, sc.changed[laptop.tenant]))
    events.sort(key=lambda event: (event[0], event[1]))

    def move(kind: FlagKind, drifted: bool, at: float, cause: Cause, seq: int = -1) -> None:
        if drifted != state.open[kind]:
            state.open[kind] = drifted
            transition = Transition("raised" if drifted else "resolved", at, cause, seq)
            result.setdefault((laptop.endpoint_id, kind), []).append(transition)

    def judge(at: float, cause: Cause, seq: int = -1) -> None:
        if not state.tools:
            return
        outdated = any(
            _outdated(version, policy.minimum_version(service))
            for service, version, _ in state.tools.values()
        )
        missing = any(
            name not in present
            for _, _, present in state.tools.values()
            for name in policy.required_attributes
        )
        move(FlagKind.OUTDATED_CLIENT, outdated, at, cause, seq)
        move(FlagKind.MISSING_POLICY, missing, at, cause, seq)

    rule = policy.stale_token
    for at, _, event in events:
        if isinstance(event, TenantPolicy):
            policy = event
            judge(at, Cause.POLICY)
        elif event.accepted:
            attributes = resource_attributes(laptop, event.tool, event.variant)
            present = frozenset(k for k, v in attributes.items() if v.strip())
            state.tools[event.tool] = (
                attributes["service.name"],
                attributes["service.version"],
                present,
            )
            state.rejections.clear()
            move(FlagKind.STALE_TOKEN, False, at, Cause.SEND, event.seq)
            judge(at, Cause.SEND, event.seq)
        elif laptop.tenant in sc.rotated and at >= sc.rotate_at:
            state.rejections.append(sc.real(at))
            recent = state.rejections[-rule.threshold :]
            if (
                len(recent) >= rule.threshold
                and recent[-1] - recent[0] <= rule.window.total_seconds()
            ):
                move(FlagKind.STALE_TOKEN, True, at, Cause.SEND, event.seq)
    return result


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """The fleet's expected transitions, per (endpoint, kind); absent = never flagged."""

    transitions: dict[Key, list[Transition]]
    endpoints: frozenset[str]

    def positives(self, kind: FlagKind) -> set[str]:
        return {endpoint for (endpoint, k) in self.transitions if k is kind}


def ground_truth(laptops: list[Laptop], sc: Scenario, seed: int = 7) -> GroundTruth:
    transitions: dict[Key, list[Transition]] = {}
    for laptop in laptops:
        transitions.update(expected(laptop, sc, sends(laptop, sc, seed)))
    return GroundTruth(transitions, frozenset(laptop.endpoint_id for laptop in laptops))
