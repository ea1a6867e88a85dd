"""Compare the flags a pipeline stored with the ground truth; summarise speed and accuracy.

``score`` is pure: the truth, the flag transitions read back and the sender's stats in, one JSON
-ready dict out. For each flag kind an endpoint is a true positive when the pipeline made
exactly the expected transitions (raised, and resolved where the laptop was fixed or the policy
relaxed), a false negative when it was expected to be flagged and the transitions differ, and a
false positive when it was flagged but never should have been.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from loadtest.fleet import Laptop, Scenario
from loadtest.sender import Stats
from loadtest.truth import Cause, GroundTruth, Transition
from schemas.messages import FlagKind

MAX_EXAMPLES = 5


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def observed_transitions(
    rows: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, FlagKind], list[tuple[str, float]]]:
    """(endpoint, kind) → [(state, recorded_at)], episodes in order of first_seen."""
    episodes: dict[tuple[str, FlagKind], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        key = (str(row["endpoint_id"]), FlagKind(row["kind"]))
        episode = episodes[key].setdefault(
            str(row["flag_id"]), {"first": _epoch(row["first_seen"])}
        )
        episode[str(row["state"])] = _epoch(row["recorded_at"])
    result: dict[tuple[str, FlagKind], list[tuple[str, float]]] = {}
    for key, by_id in episodes.items():
        sequence: list[tuple[str, float]] = []
        for episode in sorted(by_id.values(), key=lambda e: e["first"]):
            for state in ("raised", "resolved"):
                if state in episode:
                    sequence.append((state, episode[state]))
        result[key] = sequence
    return result


def _describe(expected: list[Transition], seen: list[tuple[str, float]]) -> str:
    want = " → ".join(t.state for t in expected) or "nothing"
    got = " → ".join(state for state, _ in seen) or "nothing"
    return f"expected {want}, got {got}"


def score(
    truth: GroundTruth,
    rows: Iterable[Mapping[str, Any]],
    stats: Stats,
    laptops: Sequence[Laptop],
) -> dict[str, Any]:
    """Accuracy per kind and overall, and time to flag / resolve, against the ground truth."""
    seen = observed_transitions(rows)
    laptop_of = {laptop.endpoint_id: laptop for laptop in laptops}
    accuracy: dict[str, Any] = {}
    to_flag: list[float] = []
    to_resolve: list[float] = []
    totals = {"tp": 0, "fp": 0, "fn": 0}
    for kind in FlagKind:
        tp = fp = fn = 0
        misses: list[str] = []
        false_alarms: list[str] = []
        keys = {k for k in truth.transitions if k[1] is kind} | {
            k for k in seen if k[1] is kind and k[0] in truth.endpoints
        }
        for key in sorted(keys):
            expected = truth.transitions.get(key, [])
            observed = seen.get(key, [])
            laptop = laptop_of[key[0]]
            if not expected:
                fp += 1
                if len(false_alarms) < MAX_EXAMPLES:
                    false_alarms.append(
                        f"{key[0]} ({laptop.role}): {_describe(expected, observed)}"
                    )
                continue
            if [t.state for t in expected] != [state for state, _ in observed]:
                fn += 1
                if len(misses) < MAX_EXAMPLES:
                    misses.append(f"{key[0]} ({laptop.role}): {_describe(expected, observed)}")
                continue
            tp += 1
            for transition, (_, recorded) in zip(expected, observed, strict=True):
                sent = _trigger_time(transition, laptop, stats)
                if sent is not None:
                    (to_flag if transition.state == "raised" else to_resolve).append(
                        recorded - sent
                    )
        accuracy[kind.value] = {
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "expected": tp + fn,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "misses": misses,
            "false_alarms": false_alarms,
        }
        for name, value in (("tp", tp), ("fp", fp), ("fn", fn)):
            totals[name] += value
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    accuracy["overall"] = {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "expected": tp + fn,
        **totals,
    }
    return {
        "accuracy": accuracy,
        "time_to_flag_s": _spread(to_flag),
        "time_to_resolve_s": _spread(to_resolve),
        "samples": {"time_to_flag_s": sorted(to_flag), "time_to_resolve_s": sorted(to_resolve)},
    }


def _trigger_time(transition: Transition, laptop: Laptop, stats: Stats) -> float | None:
    if transition.cause is Cause.POLICY:
        return stats.controls.get("policy change")
    return stats.triggers.get((laptop.index, transition.seq))


def _spread(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"p50": quantile(values, 0.5), "p99": quantile(values, 0.99), "n": len(values)}


def speed(stats: Stats, protocol: str) -> dict[str, Any]:
    """Exports, throughput, latency and the generator's own cost."""
    latencies = list(stats.latency_ms)
    answered = stats.accepted + stats.rejected + stats.failed
    return {
        "protocol": protocol,
        "sent": stats.sent,
        "accepted": stats.accepted,
        "rejected": stats.rejected,
        "failed": stats.failed,
        "unexpected": stats.unexpected,
        "retried": stats.retried,  # sends again after 503 / UNAVAILABLE, as exporters do
        "errors": dict(stats.errors),
        "unexpected_examples": stats.examples,
        "seconds": stats.elapsed,
        "exports_per_second": answered / stats.elapsed if stats.elapsed else 0.0,
        "latency_ms": {
            "p50": quantile(latencies, 0.5),
            "p95": quantile(latencies, 0.95),
            "p99": quantile(latencies, 0.99),
            "max": max(latencies, default=None),
        },
        "generator": {
            "cpu_seconds": stats.cpu_seconds,
            "cpu_us_per_export": stats.cpu_seconds / stats.sent * 1e6 if stats.sent else None,
            "exports_per_core_second": stats.sent / stats.cpu_seconds
            if stats.cpu_seconds
            else None,
            "lag_p99_ms": quantile(list(stats.lag_ms), 0.99),
            "pool_wait_ms": {
                "p50": quantile(list(stats.pool_wait_ms), 0.5),
                "p99": quantile(list(stats.pool_wait_ms), 0.99),
                "max": max(stats.pool_wait_ms, default=None),
            },
        },
    }


def fleet_summary(
    sc: Scenario, laptops: Sequence[Laptop], truth: GroundTruth, seed: int
) -> dict[str, Any]:
    roles: dict[str, int] = defaultdict(int)
    for laptop in laptops:
        roles[laptop.role.value] += 1
    return {
        "endpoints": len(laptops),
        "tenants": list(sc.tenants),
        "seed": seed,
        "compression": sc.compression,
        "fleet_seconds": sc.span,
        "roles": dict(sorted(roles.items())),
        "two_tools": sum(1 for laptop in laptops if len(laptop.tools) > 1),
        "expected_flags": {kind.value: len(truth.positives(kind)) for kind in FlagKind},
    }


def _fmt(value: float | int | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def render(result: Mapping[str, Any]) -> Any:
    """A rich renderable of the whole report, for the terminal."""
    from rich.console import Group
    from rich.table import Table

    fleet = result["fleet"]
    sp = result["speed"]
    title = (
        f"{fleet['endpoints']:,} endpoints, {len(fleet['tenants'])} tenants, "
        f"{fleet['fleet_seconds'] / 60:,.1f} fleet minutes in {sp['seconds']:,.1f} s "
        f"(x{fleet['compression']:,.1f}), OTLP/{sp['protocol'].upper()}"
    )
    speed_table = Table(title=title, show_header=False)
    speed_table.add_column("measure")
    speed_table.add_column("value", justify="right")
    speed_table.add_row(
        "exports sent / accepted / rejected / failed",
        f"{sp['sent']:,} / {sp['accepted']:,} / {sp['rejected']:,} / {sp['failed']:,}",
    )
    speed_table.add_row("answered other than planned", f"{sp['unexpected']:,}")
    speed_table.add_row("sent again after 503 / UNAVAILABLE", f"{sp.get('retried', 0):,}")
    speed_table.add_row("throughput", _fmt(sp["exports_per_second"], " exports/s"))
    lat = sp["latency_ms"]
    speed_table.add_row(
        "export latency p50 / p95 / p99",
        f"{_fmt(lat['p50'], ' ms')} / {_fmt(lat['p95'], ' ms')} / {_fmt(lat['p99'], ' ms')}",
    )
    for name, label in (
        ("time_to_flag_s", "time to flag"),
        ("time_to_resolve_s", "time to resolve"),
    ):
        spread = result[name]
        speed_table.add_row(
            f"{label} p50 / p99 (n)",
            f"{_fmt(spread['p50'], ' s', 2)} / {_fmt(spread['p99'], ' s', 2)} ({spread['n']})",
        )
    gen = sp["generator"]
    speed_table.add_row("generator CPU per export", _fmt(gen["cpu_us_per_export"], " µs", 0))
    speed_table.add_row("generator lag behind schedule p99", _fmt(gen["lag_p99_ms"], " ms"))
    wait = gen["pool_wait_ms"]
    speed_table.add_row(
        "waited for a free connection p50 / p99",
        f"{_fmt(wait['p50'], ' ms')} / {_fmt(wait['p99'], ' ms')}",
    )
    accuracy = Table(title="accuracy against ground truth")
    for column in ("kind", "expected", "precision", "recall", "tp", "fp", "fn"):
        accuracy.add_column(column, justify="left" if column == "kind" else "right")
    for kind, row in result["accuracy"].items():
        accuracy.add_row(
            kind,
            f"{row['expected']:,}",
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['tp']:,}",
            f"{row['fp']:,}",
            f"{row['fn']:,}",
        )
    lines: list[Any] = [speed_table, accuracy]
    if skipped := result.get("not_judged"):
        lines.append(
            f"  not in this run: {', '.join(skipped)} (a remote target's tokens and policies "
            "are not loadtest's to change); a kind with nothing expected was not judged"
        )
    for kind, row in result["accuracy"].items():
        for miss in row.get("misses", []):
            lines.append(f"  missed {kind}: {miss}")
        for alarm in row.get("false_alarms", []):
            lines.append(f"  false {kind}: {alarm}")
    gap = 0.15 * sp["seconds"]  # between the last fixes and the policy change
    if (lat["max"] or 0) / 1000 > gap:
        lines.append(
            f"  warning: exports waited up to {lat['max'] / 1000:,.1f} s, more than the "
            f"{gap:,.1f} s between the fixes and the policy change: the pipeline may have seen "
            "some of them in another order than they were sent, and judged them by it"
        )
    if (wait["p99"] or 0) > 1000:
        lines.append(
            f"  warning: exports waited up to {wait['max'] / 1000:,.1f} s in the generator for a "
            "free connection: the pipeline answered slower than --connections / --rate allows, "
            "so part of the latency above is queueing in the generator (more --connections "
            "spreads it over the pipeline, as a fleet's own connections would)"
        )
    for example in sp["unexpected_examples"]:
        lines.append(f"  unexpected answer: {example}")
    return Group(*lines)


def plot(result: Mapping[str, Any], stats: Stats, path: str) -> None:
    """Throughput and latency over time, and a time-to-flag histogram, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'driftline[plot]'") from None
    buckets: dict[int, list[float]] = defaultdict(list)
    for at, latency in zip(stats.sent_at, stats.latency_ms, strict=True):
        buckets[int(at)].append(latency)
    seconds = sorted(buckets)
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 10))
    top.plot(seconds, [len(buckets[s]) for s in seconds])
    top.set_title("exports per second")
    top.set_xlabel("s")
    for q in (0.5, 0.99):
        middle.plot(seconds, [quantile(buckets[s], q) for s in seconds], label=f"p{int(q * 100)}")
    middle.set_title("export latency (ms)")
    middle.set_yscale("log")
    middle.legend()
    samples = result["samples"]["time_to_flag_s"]
    bottom.hist(samples, bins=40)
    bottom.set_title(f"time to flag (s), {len(samples)} flags")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
