"""Endpoint states and tenant policies in memory, folded through the pure detectors.

The embedded runner's processor (`driftline run`); the Faust app keeps the same states in a
changelog-backed table instead of a dict.
"""

from __future__ import annotations

from datetime import datetime

from processors.detectors import apply, reevaluate
from processors.state import EndpointState
from schemas import AuthEvent, DriftFlag, EndpointSnapshot
from schemas.policy import TenantPolicy


class DriftEngine:
    def __init__(self, states: dict[str, EndpointState] | None = None) -> None:
        self.states: dict[str, EndpointState] = states or {}
        self.policies: dict[str, TenantPolicy] = {}

    def policy(self, tenant_id: str) -> TenantPolicy:
        return self.policies.get(tenant_id) or TenantPolicy.default(tenant_id)

    def on_event(self, event: EndpointSnapshot | AuthEvent) -> list[DriftFlag]:
        if event.tenant_id is None or event.endpoint_id is None:
            return []  # a rejection nobody can be named for: stored, never flagged
        state, flags = apply(
            self.states.get(event.endpoint_id), event, self.policy(event.tenant_id)
        )
        if state is not None:
            self.states[event.endpoint_id] = state
        return flags

    def set_policy(self, policy: TenantPolicy, now: datetime) -> list[DriftFlag]:
        """Adopt a newer policy and re-evaluate every known endpoint of its tenant at once."""
        current = self.policies.get(policy.tenant)
        if current is not None and current.version >= policy.version:
            return []
        self.policies[policy.tenant] = policy
        flags: list[DriftFlag] = []
        for endpoint_id, state in self.states.items():
            if state.tenant_id == policy.tenant:
                self.states[endpoint_id], changed = reevaluate(state, policy, now)
                flags += changed
        return flags
