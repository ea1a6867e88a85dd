"""The saved SQL files run on the real engine and answer what their names promise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import store
from schemas import AuthEvent, AuthReason, DriftFlag, EndpointSnapshot, FlagKind, FlagState, Signal

QUERIES = Path(__file__).parents[1] / "store" / "saved"
NOW = datetime.now(UTC).replace(microsecond=0)


def snapshot(serial: str, version: str, team: str | None) -> EndpointSnapshot:
    return EndpointSnapshot(
        tenant_id="acme", endpoint_id=f"acme/{serial}", serial_number=serial,
        service_name="claude-code", app_version=version, team_id=team,
        resource_attributes={"service.name": "claude-code"}, signal=Signal.METRICS,
        observed_at=NOW, received_at=NOW,
    )  # fmt: skip


def flag(serial: str, kind: FlagKind, state: FlagState, opened_hours_ago: float) -> DriftFlag:
    return DriftFlag(
        flag_id=f"{serial}-{kind.value}", tenant_id="acme", endpoint_id=f"acme/{serial}",
        kind=kind, state=state, detail="d", first_seen=NOW - timedelta(hours=opened_hours_ago),
        last_seen=NOW if state is FlagState.RESOLVED else NOW - timedelta(hours=opened_hours_ago),
        policy_version=1,
    )  # fmt: skip


def rejection(serial: str, reason: AuthReason, minutes_ago: int) -> AuthEvent:
    return AuthEvent(
        tenant_id="acme", endpoint_id=f"acme/{serial}", identity=serial, token_id="0badc0de",
        reason=reason, source="10.0.0.7", observed_at=NOW - timedelta(minutes=minutes_ago),
    )  # fmt: skip


@pytest.fixture
async def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    client = store.connect(f"chdb://{tmp_path / 'ch'}")
    store.migrate(client)
    async with store.BatchWriter(client) as writer:
        for message in (
            snapshot("A", "2.0.3", "web"),
            snapshot("B", "2.0.3", None),
            snapshot("C", "2.0.14", "web"),
            flag("A", FlagKind.OUTDATED_CLIENT, FlagState.RAISED, 5),
            flag("B", FlagKind.OUTDATED_CLIENT, FlagState.RAISED, 5),
            flag("B", FlagKind.MISSING_POLICY, FlagState.RAISED, 5),
            flag("C", FlagKind.OUTDATED_CLIENT, FlagState.RAISED, 4),
            flag("C", FlagKind.OUTDATED_CLIENT, FlagState.RESOLVED, 4),
            rejection("A", AuthReason.RETIRED, minutes_ago=5),
            rejection("A", AuthReason.RETIRED, minutes_ago=3),
            rejection("A", AuthReason.RETIRED, minutes_ago=600),  # before the rotation
            rejection("B", AuthReason.UNKNOWN, minutes_ago=2),  # not one of our tokens
        ):
            await writer.add(message)
    yield client
    client.close()


def run(client, name: str, **parameters: object) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    sql = (QUERIES / name).read_text()
    return list(client.query(sql, parameters={"tenant": "acme", **parameters}).result_rows)


def test_drift_by_team(client) -> None:  # type: ignore[no-untyped-def]
    rows = {(team, kind): n for team, kind, n, _ in run(client, "drift_by_team.sql")}
    assert rows == {
        ("web", "outdated_client"): 1,
        ("(no team)", "outdated_client"): 1,
        ("(no team)", "missing_policy"): 1,
    }


def test_version_distribution(client) -> None:  # type: ignore[no-untyped-def]
    rows = {(v, n, outdated) for _, v, n, outdated in run(client, "version_distribution.sql")}
    assert rows == {("2.0.3", 2, 2), ("2.0.14", 1, 0)}


def test_mean_time_to_resolve(client) -> None:  # type: ignore[no-untyped-def]
    [(kind, count, mean_hours, _)] = run(client, "mean_time_to_resolve.sql", days=30)
    assert (kind, count, mean_hours) == ("outdated_client", 1, 4.0)


def test_stale_tokens_since_rotation(client) -> None:  # type: ignore[no-untyped-def]
    rows = run(client, "stale_tokens_since_rotation.sql", since=NOW - timedelta(hours=1))
    [(endpoint, identity, tokens, count, *_)] = rows
    assert (endpoint, identity, tokens, count) == ("acme/A", "A", ["0badc0de"], 2)
