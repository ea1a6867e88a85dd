"""deploy/grafana/driftline.json: valid, every ClickHouse panel runs on the real engine over the
known fleet, every Prometheus panel names metrics that Driftline exposes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

import actions.metrics
import ingest.metrics
import store
from driftline.console.metrics import StoreGauges
from tests.support.console_fleet import seed_client

DASHBOARD = Path(__file__).parents[1] / "deploy" / "grafana" / "driftline.json"
CLICKHOUSE = "grafana-clickhouse-datasource"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def targets(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target)
        for panel in dashboard()["panels"]
        for target in panel["targets"]
        if target["datasource"]["type"] == kind
    ]


def as_grafana_would(sql: str, tenant: str) -> str:
    """The plugin's variables and macros, expanded the way it expands them."""
    sql = sql.replace("${tenant}", tenant)
    sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 30 DAY AND \1 <= now()", sql)
    return re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 1 HOUR)", sql)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[store.Client]:
    client = store.connect(f"chdb://{tmp_path / 'ch'}")
    store.migrate(client)
    await seed_client(client)
    yield client
    client.close()


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"clickhouse", "prometheus", "tenant"} <= variables
    kinds = {t["datasource"]["type"] for p in board["panels"] for t in p["targets"]}
    assert kinds == {CLICKHOUSE, "prometheus"}
    assert len(targets(CLICKHOUSE)) >= 5 and len(targets("prometheus")) >= 5


def test_every_clickhouse_panel_runs_and_stays_in_its_tenant(client: store.Client) -> None:
    answers: dict[str, list[Any]] = {}
    for title, target in targets(CLICKHOUSE):
        sql = as_grafana_would(target["rawSql"], "acme")
        answers[title] = list(client.query(sql).result_rows)
        assert "globex" not in repr(answers[title]), title
    assert answers["Compliant endpoints"] == [(60.0,)]
    assert answers["Endpoints with open drift"] == [(4,)]
    assert answers["Still on an old token"][0][:3] == ("acme/A7", ["0ldt0ken"], 3)
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "tenant")
    assert client.query(variable["query"]).result_rows == [("acme",), ("globex",)]


def test_every_prometheus_panel_names_an_exposed_metric(client: store.Client) -> None:
    registry = CollectorRegistry()
    registry.register(StoreGauges(client))
    exposed = (generate_latest(registry) + generate_latest(REGISTRY)).decode()
    names = set(re.findall(r"^# TYPE (\w+)", exposed, re.MULTILINE))
    names |= {f"{n}_total" for n in names}  # counters are exposed as NAME_total samples
    assert ingest.metrics.REJECTS and actions.metrics.PULL_OK  # imported: in REGISTRY
    for title, target in targets("prometheus"):
        used = set(re.findall(r"\bdriftline_\w+", target["expr"]))
        assert used and used <= names, (title, used - names)
