"""Tenant policies as a processors worker holds them, and the request to re-check an endpoint.

Every worker keeps the whole policy topic in a ``Policies`` (see ``Processors.read_policies``).
A policy is identified by its ``fingerprint``, which each endpoint's stored state remembers; when
a tenant's fingerprint changes, the worker sends a ``ReevaluateRequest`` per endpoint still
evaluated under another one, and the agent re-checks it in stream context.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.policy import TenantPolicy

log = logging.getLogger(__name__)


def fingerprint(policy: TenantPolicy) -> str:
    """Identity of a policy's content; stored with each state (8 bytes: collisions don't matter
    in practice, and one would only delay a re-evaluation until the next change)."""
    return hashlib.blake2b(policy.to_json(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """A tenant's current policy; ``at`` is its record's timestamp (None: never published)."""

    policy: TenantPolicy
    fingerprint: str
    at: datetime | None


class Policies:
    """tenant → current policy, as read from the policy topic; default policy for the rest."""

    def __init__(self) -> None:
        self._entries: dict[str, PolicyEntry] = {}
        self._defaults: dict[str, PolicyEntry] = {}
        self.ready = asyncio.Event()  # set once the topic was read up to its end at start-up

    def get(self, tenant: str) -> PolicyEntry:
        entry = self._entries.get(tenant)
        if entry is not None:
            return entry
        default = self._defaults.get(tenant)
        if default is None:
            policy = TenantPolicy.default(tenant)
            default = self._defaults[tenant] = PolicyEntry(policy, fingerprint(policy), None)
        return default

    def update(self, tenant: str, policy: TenantPolicy | None, at: datetime) -> bool:
        """Install ``policy`` (None: the tenant's record was deleted); True if it changed.

        The latest record wins even with a lower version: every worker reads the same log in
        the same order, so they agree, which matters more than refusing a rollback.
        """
        new = policy if policy is not None else TenantPolicy.default(tenant)
        current = self.get(tenant)
        key = fingerprint(new)
        if key == current.fingerprint:
            return False
        if new.version < current.policy.version:
            log.warning(
                "policy of tenant %s went back from version %d to %d",
                tenant,
                current.policy.version,
                new.version,
            )
        self._entries[tenant] = PolicyEntry(new, key, at)
        return True

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class ReevaluateRequest:
    """Re-check one endpoint under the tenant policy fingerprinted ``policy``, effective ``at``."""

    tenant_id: str
    endpoint_id: str
    policy: str
    at: datetime

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "tenant_id": self.tenant_id,
                "endpoint_id": self.endpoint_id,
                "policy": self.policy,
                "at": self.at.isoformat(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReevaluateRequest:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("re-evaluation request is not an object")
        at = datetime.fromisoformat(str(raw["at"]))
        return cls(
            tenant_id=str(raw["tenant_id"]),
            endpoint_id=str(raw["endpoint_id"]),
            policy=str(raw["policy"]),
            at=at if at.tzinfo else at.replace(tzinfo=UTC),
        )
