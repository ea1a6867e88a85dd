"""`driftline report` and `driftline query`: a tenant's fleet summary, and the saved SQL.

Both work on the embedded store and on a ClickHouse server alike (they take a client or a
client factory); the saved SQL runs in the same read-only, tenant-filtered sandbox as
`driftline sql`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from store import console as queries
from store import readonly


def saved_names() -> list[str]:
    """The saved queries, by file name without ``.sql`` (the only names `query` accepts)."""
    folder = resources.files("store.saved")
    return sorted(p.name[: -len(".sql")] for p in folder.iterdir() if p.name.endswith(".sql"))


def saved_sql(name: str) -> str:
    names = saved_names()
    if name not in names:  # also keeps "../x" and absolute paths out
        raise ValueError(f"no saved query {name!r}; there are: {', '.join(names)}")
    return resources.files("store.saved").joinpath(f"{name}.sql").read_text()


def run_saved(
    connect: Callable[[], Any], name: str, tenant: str, params: Mapping[str, str]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A saved query with ``{tenant}`` bound to `tenant` and the rest from ``--param``."""
    if "tenant" in params and params["tenant"] != tenant:
        raise ValueError("the tenant is --tenant's; --param tenant=… may not differ")
    return readonly.run(connect, saved_sql(name), [tenant], {**params, "tenant": tenant})


def build(client: Any, tenant: str, now: datetime | None = None) -> dict[str, Any]:
    """The fleet summary of one tenant: what a security lead reads on Monday morning."""
    fleet = queries.fleet(client, [tenant], now=now)
    remediation = fleet.remediation
    return {
        "tenant": tenant,
        "generated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "endpoints": fleet.endpoints,
        "drifting": fleet.drifting,
        "compliant_percent": fleet.compliant_percent,
        "open_drift_by_kind": [
            {"kind": r["kind"], "flags": int(r["flags"]), "endpoints": int(r["endpoints"])}
            for r in fleet.by_kind
        ],
        "top_drift_by_team": [
            {"team": r["team"], "kind": r["kind"], "flags": int(r["flags"])}
            for r in fleet.by_team[:10]
        ],
        "version_spread": [
            {
                "service": r["service"],
                "version": r["version"],
                "endpoints": int(r["endpoints"]),
                "outdated": int(r["outdated"]),
            }
            for r in fleet.by_version
        ],
        "mean_time_to_remediate_s": _number(remediation["mean_s"]),
        "remediated": int(remediation["remediated"]),
        "open_remediation": int(remediation["pending"]),
        "mean_time_to_resolve_s": _number(fleet.resolve["mean_s"]),
    }


def _number(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2)
    if fmt == "csv":
        return _csv(report)
    if fmt == "md":
        return _markdown(report)
    raise ValueError(f"unknown format {fmt!r}: md, csv or json")


def _csv(report: dict[str, Any]) -> str:
    """One row per figure: section, key, value (a spreadsheet takes it as is)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "key", "value"])
    for key in (
        "tenant",
        "generated_at",
        "endpoints",
        "drifting",
        "compliant_percent",
        "mean_time_to_remediate_s",
        "remediated",
        "open_remediation",
        "mean_time_to_resolve_s",
    ):
        writer.writerow(["summary", key, report[key]])
    for row in report["open_drift_by_kind"]:
        writer.writerow(["open_drift_by_kind", row["kind"], row["flags"]])
    for row in report["top_drift_by_team"]:
        writer.writerow(["top_drift_by_team", f"{row['team']}/{row['kind']}", row["flags"]])
    for row in report["version_spread"]:
        writer.writerow(["version_spread", f"{row['service']} {row['version']}", row["endpoints"]])
    return out.getvalue()


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f} h"


def _markdown(report: dict[str, Any]) -> str:
    compliant = report["compliant_percent"]
    lines = [
        f"# Fleet report: {report['tenant']}",
        "",
        f"Generated {report['generated_at']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| endpoints | {report['endpoints']} |",
        f"| with open drift | {report['drifting']} |",
        f"| compliant | {'-' if compliant is None else f'{compliant}%'} |",
        f"| mean time to remediate | {_hours(report['mean_time_to_remediate_s'])} |",
        f"| open remediation (force-synced, not yet fixed) | {report['open_remediation']} |",
        f"| mean time to resolve drift (30 days) | {_hours(report['mean_time_to_resolve_s'])} |",
        "",
        "## Open drift by kind",
        "",
        "| kind | flags | endpoints |",
        "|---|---|---|",
        *(
            f"| {r['kind']} | {r['flags']} | {r['endpoints']} |"
            for r in report["open_drift_by_kind"]
        ),
        "",
        "## Top drift by team",
        "",
        "| team | kind | flags |",
        "|---|---|---|",
        *(
            f"| {_cell(r['team'])} | {r['kind']} | {r['flags']} |"
            for r in report["top_drift_by_team"]
        ),
        "",
        "## Version spread",
        "",
        "| tool | version | endpoints | outdated |",
        "|---|---|---|---|",
        *(
            f"| {_cell(r['service'])} | {_cell(r['version'])} | "
            f"{r['endpoints']} | {r['outdated']} |"
            for r in report["version_spread"]
        ),
        "",
    ]
    return "\n".join(lines)


def _cell(value: str) -> str:
    """Telemetry-supplied text in a Markdown table: no pipes or newlines to break it."""
    return value.replace("|", "\\|").replace("\n", " ")
