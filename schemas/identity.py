"""How an endpoint is named. Ingest builds ids with it; everything downstream joins on them."""

from typing import Final

DEFAULT_IDENTITY_ATTRIBUTES: Final = ("device.serial_number", "host.id", "host.name")
SERIAL_NUMBER: Final = "device.serial_number"
TEAM_ID: Final = "team.id"
APP_VERSION: Final = "app.version"
SERVICE_NAME: Final = "service.name"
SERVICE_VERSION: Final = "service.version"


def endpoint_id(tenant_id: str, identity: str) -> str:
    """``tenant/identity``: the same serial in two tenants is two endpoints."""
    return f"{tenant_id}/{identity}"
