"""Building a vendor client for an integration, and checking that an integration works.

Kept apart from ``actions.service`` (which needs the store) so ``driftline mdm …`` commands load
only what they use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from actions.mdm import Integration, MdmClient, MdmError
from schemas.remediation import Vendor


def client_for(integration: Integration, **options: Any) -> MdmClient:
    """The vendor's client for an integration (the one place that maps vendor -> module)."""
    if integration.vendor is Vendor.JAMF:
        from actions.jamf import JamfClient

        return JamfClient(integration, **options)
    if integration.vendor is Vendor.INTUNE:
        from actions.intune import IntuneClient

        return IntuneClient(integration, **options)
    from actions.iru import IruClient

    return IruClient(integration, **options)


def allowed_routes(integration: Integration) -> list[str]:
    """Every (method, path) the integration's client may call: what the customer must grant."""
    from actions import intune, iru, jamf

    module = {Vendor.JAMF: jamf, Vendor.INTUNE: intune, Vendor.IRU: iru}[integration.vendor]
    return [str(route) for route in module.allowlist(integration).routes]


@dataclass(frozen=True)
class Check:
    """One step of ``mdm test``: what was tried and exactly what came back."""

    vendor: Vendor
    step: str  # token | read
    ok: bool
    detail: str


async def check_integration(
    integration: Integration,
    client_for: Callable[[Integration], MdmClient] = client_for,
) -> list[Check]:
    """Fetch a token with the current credential, then make one read call. Stops at the first
    failure, naming the request, the status and the kind of refusal; never the secret."""
    vendor = integration.vendor
    if integration.current is None:
        return [Check(vendor, "token", False, "no credential (driftline mdm credentials set)")]
    try:
        client = client_for(integration)
    except ValueError as error:
        return [Check(vendor, "config", False, str(error))]
    checks: list[Check] = []
    try:
        session = client.session
        try:
            await session.auth.header(session.http, integration.current)
        except MdmError as error:
            return [Check(vendor, "token", False, f"{type(error).__name__}: {error}")]
        url = getattr(session.auth, "token_url", None)
        got = f"token from {httpx.URL(url).path}" if url else "static bearer token (no exchange)"
        checks.append(Check(vendor, "token", True, got))
        try:
            sent = await client.probe()
        except MdmError as error:
            checks.append(Check(vendor, "read", False, f"{type(error).__name__}: {error}"))
        else:
            if sent.credential == "previous":
                why = f"{sent.request}: the current credential was refused (401); only the "
                checks.append(Check(vendor, "read", False, why + "previous one answered"))
            else:
                checks.append(Check(vendor, "read", True, f"{sent.request} -> {sent.status}"))
    finally:
        await client.aclose()
    return checks
