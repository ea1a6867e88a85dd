"""Where tenant policies live: `DATA/policies/<tenant>.json`, and the compacted Kafka topic.

`driftline policy set` and `driftline tokens rotate` write here; a running `driftline run`
picks changes up within a second, and Kafka-mode processors read `driftline.policy`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from bus import KafkaBus, KafkaOptions, Record
from schemas import check_tenant_id, topics
from schemas.policy import TenantPolicy

log = logging.getLogger(__name__)


class PolicyDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, tenant: str) -> Path:
        return self.root / f"{check_tenant_id(tenant)}.json"  # no separator: path-safe

    def get(self, tenant: str) -> TenantPolicy | None:
        path = self._path(tenant)
        return TenantPolicy.from_json(path.read_bytes()) if path.exists() else None

    def all(self) -> list[TenantPolicy]:
        """Every valid policy. A file an older version wrote for a tenant id that is no longer
        valid (``a%2Fb.json``) is skipped and logged: it must not stop the pipeline, and no
        token of such a tenant authenticates anyway."""
        if not self.root.exists():
            return []
        policies = []
        for path in sorted(self.root.glob("*.json")):
            try:
                policies.append(TenantPolicy.from_json(path.read_bytes()))
            except ValueError as error:
                log.error("policy file %s not applied: %s", path, str(error).splitlines()[0])
        return policies

    def stamp(self) -> tuple[tuple[str, int], ...]:
        """Changes when any policy file does; cheap enough to poll every second."""
        if not self.root.exists():
            return ()
        return tuple((p.name, p.stat().st_mtime_ns) for p in sorted(self.root.glob("*.json")))

    def put(self, policy: TenantPolicy) -> TenantPolicy:
        """Store as the tenant's next version; a rotation time already known is kept."""
        previous = self.get(policy.tenant)
        update: dict[str, object] = {"version": (previous.version if previous else 0) + 1}
        if policy.token_rotated_at is None and previous is not None:
            update["token_rotated_at"] = previous.token_rotated_at
        stored = policy.model_copy(update=update)
        self._write(stored)
        return stored

    def record_rotation(self, tenant: str, rotated_at: datetime) -> TenantPolicy:
        current = self.get(tenant) or TenantPolicy.default(tenant)
        return self.put(current.model_copy(update={"token_rotated_at": rotated_at}))

    def _write(self, policy: TenantPolicy) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(policy.tenant)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(json.loads(policy.to_json()), indent=2) + "\n")
        temporary.replace(path)  # atomic: a watcher never reads half a file


async def publish(bootstrap: str, policy: TenantPolicy) -> None:
    """Put a policy on the compacted topic, keyed by tenant, acknowledged by all replicas."""
    bus = KafkaBus(KafkaOptions(bootstrap, client_id="driftline-policy"))
    await bus.start()
    try:
        await bus.wait_ready(within=30)
        await bus.publish([Record(topics.POLICY, policy.tenant, policy.to_json())])
    finally:
        await bus.stop()
