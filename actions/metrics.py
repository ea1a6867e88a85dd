"""Prometheus gauges of the remediation stage: each MDM's compliance pull, per tenant and vendor."""

from __future__ import annotations

import time

from prometheus_client import Gauge

PULL_OK = Gauge(
    "driftline_mdm_pull_ok",
    "1 when the latest compliance pull through this MDM's API succeeded, 0 when it failed",
    ["tenant", "vendor"],
)
PULL_AT = Gauge(
    "driftline_mdm_pull_last_success_timestamp_seconds",
    "When this MDM's compliance was last pulled successfully (Unix time)",
    ["tenant", "vendor"],
)


def pulled(tenant: str, ok: list[str], failed: list[str]) -> None:
    now = time.time()
    for vendor in ok:
        PULL_OK.labels(tenant, vendor).set(1)
        PULL_AT.labels(tenant, vendor).set(now)
    for vendor in failed:
        PULL_OK.labels(tenant, vendor).set(0)
