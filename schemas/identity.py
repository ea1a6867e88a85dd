"""How tenants and endpoints are named. Ingest builds ids with it; the rest joins on them.

A tenant id is ``[a-z0-9][a-z0-9._-]{0,62}`` (and never ``.`` or ``..``): no ``/``, so an
endpoint id ``tenant/identity`` splits at its first ``/`` back into the two, whatever the
identity attribute holds, and no separator, so a tenant id is safe in a file name.
"""

import re
from typing import Final

DEFAULT_IDENTITY_ATTRIBUTES: Final = ("device.serial_number", "host.id", "host.name")
SERIAL_NUMBER: Final = "device.serial_number"
TEAM_ID: Final = "team.id"
APP_VERSION: Final = "app.version"
SERVICE_NAME: Final = "service.name"
SERVICE_VERSION: Final = "service.version"

TENANT_ID_CHARSET: Final = "[a-z0-9][a-z0-9._-]{0,62}"
_TENANT_ID: Final = re.compile(TENANT_ID_CHARSET)


class TenantIdError(ValueError):
    """A tenant id outside the documented charset."""


def is_tenant_id(value: object) -> bool:
    return isinstance(value, str) and _TENANT_ID.fullmatch(value) is not None and ".." not in value


def check_tenant_id(value: object) -> str:
    """The value if it is a valid tenant id, else TenantIdError naming the rule.

    ``..`` is refused inside an id too: the charset alone already rules out any path
    separator, this only keeps ids from looking like one.
    """
    if not is_tenant_id(value):
        raise TenantIdError(
            f"invalid tenant id {value!r}: use 1-63 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit, without '..'"
        )
    return str(value)


def endpoint_id(tenant_id: str, identity: str) -> str:
    """``tenant/identity``: the same serial in two tenants is two endpoints."""
    return f"{tenant_id}/{identity}"


def split_endpoint_id(value: str) -> tuple[str, str] | None:
    """``(tenant, identity)`` of an endpoint id, or None when it names no valid tenant.

    The tenant is everything before the first ``/`` (a tenant id never contains one); the
    identity is the rest, slashes and all.
    """
    tenant, slash, identity = value.partition("/")
    if not slash or not identity or not is_tenant_id(tenant):
        return None
    return tenant, identity
