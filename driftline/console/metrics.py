"""Prometheus gauges read from the store at scrape time: drift, remediation, MDM pulls, rejections.

Labels are tenant, kind, state, vendor and reason only: never an endpoint, so the series count
grows with tenants, not with laptops. A scrape reads four aggregates; their answer is kept for
`ttl` seconds so several scrapers cost one read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from store import console as queries

log = logging.getLogger(__name__)

NAMES = (
    "driftline_open_drift",
    "driftline_remediation_actions",
    "driftline_mdm_last_pull_age_seconds",
    "driftline_auth_rejections_24h",
    "driftline_store_up",
)


class StoreGauges(Collector):
    def __init__(self, client: Any, ttl: float = 10.0) -> None:
        self.client = client
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, list[dict[str, Any]]] | None] = (-1e9, None)

    def _read(self) -> dict[str, list[dict[str, Any]]] | None:
        with self._lock:
            at, value = self._cached
            if time.monotonic() - at < self.ttl:
                return value
            try:
                value = queries.gauges(self.client)
            except Exception:  # a scrape must answer even when the store does not
                log.exception("store gauges not read")
                value = None
            self._cached = (time.monotonic(), value)
            return value

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The names, for the registry's duplicate check, without reading the store."""
        for name in NAMES:
            yield GaugeMetricFamily(name, name)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        data = self._read()
        up = GaugeMetricFamily("driftline_store_up", "1 when the store answered this scrape")
        up.add_metric([], 0 if data is None else 1)
        yield up
        if data is None:
            return
        drift = GaugeMetricFamily(
            "driftline_open_drift", "Open drift flags", labels=["tenant", "kind"]
        )
        for row in data["open_drift"]:
            drift.add_metric([row["tenant_id"], row["kind"]], row["n"])
        yield drift
        actions = GaugeMetricFamily(
            "driftline_remediation_actions",
            "Remediation audit steps by outcome (planned, sent, succeeded, failed, skipped)",
            labels=["tenant", "state", "mode"],
        )
        for row in data["remediation"]:
            mode = "dry_run" if row["dry_run"] else "live"
            actions.add_metric([row["tenant_id"], row["state"], mode], row["n"])
        yield actions
        age = GaugeMetricFamily(
            "driftline_mdm_last_pull_age_seconds",
            "Seconds since each MDM's compliance was last imported (pull or CSV)",
            labels=["tenant", "vendor"],
        )
        now = datetime.now(UTC)
        for row in data["last_import"]:
            at = row["at"] if row["at"].tzinfo else row["at"].replace(tzinfo=UTC)
            age.add_metric([row["tenant_id"], row["vendor"]], (now - at).total_seconds())
        yield age
        rejections = GaugeMetricFamily(
            "driftline_auth_rejections_24h",
            "Rejected ingest requests in the last 24 hours by reason",
            labels=["tenant", "reason"],
        )
        for row in data["rejections"]:
            rejections.add_metric([row["tenant_id"] or "(unknown)", row["reason"]], row["n"])
        yield rejections
