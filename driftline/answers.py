"""The two questions `driftline drift` and `driftline endpoint` ask, answered honestly.

Asked in the process that holds the store (`driftline run`, over the admin API) or in the CLI
itself; either way an unknown tenant or an endpoint that is not there is an error, never an
empty answer a security team would read as "all clear".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from driftline.errors import NotFound
from schemas import check_tenant_id
from store import queries


def registry_tenants(data: Path, registry: Path, integrations: Path) -> Callable[[str], bool]:
    """Tenants that exist without having sent anything yet: a token, a policy or an MDM
    integration names them."""

    def known(tenant: str) -> bool:
        from ingest.tokens import registered_tenants

        if (
            tenant in registered_tenants(registry)
            or (data / "policies" / f"{tenant}.json").exists()
        ):
            return True
        if not integrations.exists():
            return False
        return any(i.get("tenant_id") == tenant for i in json.loads(integrations.read_text()))

    return known


def _check_tenant(client: Client, tenant: str | None, known: Callable[[str], bool]) -> None:
    if tenant is None:
        return
    check_tenant_id(tenant)
    if not known(tenant) and not queries.tenant_seen(client, tenant):
        raise NotFound(f"unknown tenant {tenant!r}: no token, policy, integration or data names it")


def drift(
    client: Client,
    known: Callable[[str], bool],
    tenant: str | None,
    kind: str | None = None,
    team: str | None = None,
    service: str | None = None,
) -> list[dict[str, Any]]:
    _check_tenant(client, tenant, known)
    return queries.drift(client, tenant, kind, team, service)


def endpoint(
    client: Client, known: Callable[[str], bool], tenant: str | None, given: str
) -> dict[str, Any]:
    """One endpoint's history; ``given`` is its id or, when unambiguous, its bare identity."""
    _check_tenant(client, tenant, known)
    found = queries.find_endpoints(client, tenant, given)
    if given in found:
        found = [given]
    if not found:
        scope = f" in tenant {tenant!r}" if tenant else ""
        raise NotFound(f"endpoint {given!r} not found{scope}")
    if len(found) > 1:
        raise ValueError(f"{given!r} is ambiguous: it names {', '.join(found)}; give the full id")
    return queries.endpoint_history(client, tenant, found[0])
