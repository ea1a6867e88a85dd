"""Microsoft Intune through Microsoft Graph v1.0: device lookup, compliance, sync, profile push.

Only the API is described here; allowlist enforcement, credentials, retries and limits are
``actions.mdm.Session``'s. Graph facts this module is built around (sources in
``/work/shared/reference/mdm-apis-and-claude-code-notes.md``, section 2):

- ``$filter`` support on ``managedDevices`` is undocumented and unsupported filters are silently
  ignored (every device comes back), so the serial is always re-checked here.
- Paging follows ``@odata.nextLink`` verbatim (a full URL, checked to stay on the Graph host);
  ``$skiptoken`` is opaque and never parsed.
- ``deviceConfigurationDeviceStatus`` rows carry no serial or device id, only
  ``deviceDisplayName`` and ``userPrincipalName``; they are joined to managed devices on those
  and a row that fits several devices is reported as UNKNOWN for each, never attributed to one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from actions.mdm import (
    Allowlist,
    ClientCredentials,
    Integration,
    Limits,
    MdmError,
    RetryPolicy,
    Route,
    Sent,
    Session,
    Sleep,
    vendor_time,
)
from schemas.remediation import ComplianceRecord, ComplianceStatus, Device, Vendor

log = logging.getLogger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MANAGED_DEVICES = "/v1.0/deviceManagement/managedDevices"
CONFIGURATIONS = "/v1.0/deviceManagement/deviceConfigurations"
MACOS_CUSTOM = "#microsoft.graph.macOSCustomConfiguration"

# Intune limits per app per tenant (learn.microsoft.com/graph/throttling-limits): device
# configuration is the stricter family, 100 writes and 1000 requests per 20 s.
LIMITS = Limits(concurrency=4, rate=(1000, 20.0), write_rate=(100, 20.0))

_LOOKUP_SELECT = "id,deviceName,serialNumber,complianceState,lastSyncDateTime,operatingSystem"
# The compliance join needs the user as well: display names alone are often shared.
_LIST_SELECT = _LOOKUP_SELECT + ",userPrincipalName"
_MAX_PAGES = 10_000  # a nextLink loop must end even if the server keeps answering

# Graph ids are GUIDs; anything else (a "/", a dot segment that httpx would resolve) would reach
# a different path than the allowlist checked.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Worst first: one record per device carries the worst of what Graph said about it.
_RANK = {
    ComplianceStatus.NONCOMPLIANT: 3,
    ComplianceStatus.MISSING_PROFILE: 2,
    ComplianceStatus.UNKNOWN: 1,
    ComplianceStatus.COMPLIANT: 0,
}
_DEVICE_STATE = {
    "noncompliant": ComplianceStatus.NONCOMPLIANT,
    "error": ComplianceStatus.NONCOMPLIANT,
    "conflict": ComplianceStatus.NONCOMPLIANT,
    "compliant": ComplianceStatus.COMPLIANT,
    "ingraceperiod": ComplianceStatus.COMPLIANT,
}
_PROFILE_STATUS = {
    "noncompliant": ComplianceStatus.NONCOMPLIANT,
    "error": ComplianceStatus.NONCOMPLIANT,
    "conflict": ComplianceStatus.NONCOMPLIANT,
    "notassigned": ComplianceStatus.MISSING_PROFILE,
    "unknown": ComplianceStatus.MISSING_PROFILE,  # not (yet) reported by the device
    "pending": ComplianceStatus.MISSING_PROFILE,
    "compliant": ComplianceStatus.COMPLIANT,
    "remediated": ComplianceStatus.COMPLIANT,
}
_NOT_APPLICABLE = "notapplicable"  # the profile does not target the device: says nothing


def allowlist(integration: Integration) -> Allowlist:
    """Least privilege: the Claude Code profile only, and sync only with the customer's opt-in.

    Configuration routes name ``profile_id`` literally, so no other configuration can be read
    or patched; without a profile id there are none.
    """
    routes = [Route("GET", MANAGED_DEVICES)]
    if integration.profile_id is not None:
        profile = f"{CONFIGURATIONS}/{_segment(integration.profile_id, 'profile_id')}"
        routes += [
            Route("GET", profile),
            Route("PATCH", profile),
            Route("GET", f"{profile}/deviceStatuses"),
        ]
    if integration.force_sync:
        routes.append(Route("POST", MANAGED_DEVICES + "/{id}/syncDevice"))
    return Allowlist(tuple(routes))


def odata_string(value: str) -> str:
    """An OData string literal: quotes doubled, so a serial cannot end the literal early."""
    return "'" + value.replace("'", "''") + "'"


class IntuneClient:
    """``MdmClient`` for Intune. ``integration.base_url`` is the Graph root, not ``/v1.0``."""

    def __init__(
        self,
        integration: Integration,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if integration.vendor is not Vendor.INTUNE:
            raise ValueError(f"not an Intune integration: {integration.vendor.value}")
        if not integration.token_url:
            raise ValueError(
                "Intune needs token_url: https://login.microsoftonline.com/<entra-tenant>"
                "/oauth2/v2.0/token"
            )
        self.integration = integration
        self.auth = ClientCredentials(token_url=integration.token_url, scope=GRAPH_SCOPE)
        self.session = Session(
            integration,
            allowlist(integration),
            self.auth,
            LIMITS,
            retry=retry,
            timeout=timeout,
            transport=transport,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return f"IntuneClient(tenant={self.integration.tenant_id!r})"

    async def __aenter__(self) -> IntuneClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.session.aclose()

    # --- reads ----------------------------------------------------------------------------

    async def devices_by_serial(self, serial: str) -> list[Device]:
        wanted = _norm(serial)
        if not wanted:
            return []
        params = {
            "$filter": f"serialNumber eq {odata_string(serial.strip())}",
            "$select": _LOOKUP_SELECT,
        }
        items = await self._managed_devices(params)
        # The filter may have been ignored: only an exact serial match is this device.
        return [self._device(i) for i in items if _norm(_str(i, "serialNumber")) == wanted]

    async def inventory(self) -> list[Device]:
        items = await self._managed_devices({"$select": _LIST_SELECT})
        return [self._device(item) for item in items]

    async def compliance(self, imported_at: datetime) -> list[ComplianceRecord]:
        """``complianceState`` of every device, worsened by its Claude Code profile status.

        A device without a status row is judged on ``complianceState`` alone: Graph does not
        document which devices get a row (the profile may not target the device at all), so
        a missing row is not taken as a missing profile.
        """
        devices = await self._managed_devices({"$select": _LIST_SELECT})
        findings: dict[str, list[_Finding]] = {}
        for item in devices:
            state = _str(item, "complianceState") or "unknown"
            status = _DEVICE_STATE.get(state.casefold(), ComplianceStatus.UNKNOWN)
            when = _when(item.get("lastSyncDateTime"))
            findings[_str(item, "id")] = [_Finding(status, f"complianceState={state}", when)]
        profile_id = self.integration.profile_id
        if profile_id is not None:
            path = f"{CONFIGURATIONS}/{_segment(profile_id, 'profile_id')}/deviceStatuses"
            rows = await self._list(path, None)
            self._join_profile_statuses(devices, rows, findings)
        by_id = {_str(item, "id"): item for item in devices}
        records = []
        for device_id in sorted(findings):
            worst = max(_RANK[f.status] for f in findings[device_id])
            chosen = [f for f in findings[device_id] if _RANK[f.status] == worst]
            reported = [f.reported_at for f in chosen if f.reported_at is not None]
            records.append(
                ComplianceRecord(
                    tenant_id=self.integration.tenant_id,
                    vendor=Vendor.INTUNE,
                    device_id=device_id,
                    serial_number=_serial(by_id[device_id]),
                    status=chosen[0].status,
                    reason="; ".join(dict.fromkeys(f.reason for f in chosen)),
                    reported_at=max(reported, default=imported_at),
                    imported_at=imported_at,
                    last_contact=_when(by_id[device_id].get("lastSyncDateTime")),
                )
            )
        return records

    def _join_profile_statuses(
        self,
        devices: list[Mapping[str, Any]],
        rows: Iterable[Mapping[str, Any]],
        findings: dict[str, list[_Finding]],
    ) -> None:
        """Attribute each status row to the one device with its display name (and user).

        The UPN narrows the match only when both sides have one. A row that fits several
        devices makes each of them UNKNOWN: reporting the wrong Mac as non-compliant would
        send remediation to a device that is fine.
        """
        by_name: dict[str, list[Mapping[str, Any]]] = {}
        for item in devices:
            by_name.setdefault(_norm(_str(item, "deviceName")), []).append(item)
        unmatched = 0
        for row in rows:
            raw = _str(row, "status") or "unknown"
            if raw.casefold() == _NOT_APPLICABLE:
                continue
            name, upn = _norm(_str(row, "deviceDisplayName")), _norm(_str(row, "userPrincipalName"))
            candidates = [
                device
                for device in (by_name.get(name, []) if name else [])
                if _same_user(upn, _norm(_str(device, "userPrincipalName")))
            ]
            when = _when(row.get("lastReportedDateTime"))
            if not candidates:
                unmatched += 1
            elif len(candidates) > 1:
                reason = (
                    f"profile status {raw} for display name {_str(row, 'deviceDisplayName')!r} "
                    f"fits {len(candidates)} devices; not attributed"
                )
                for device in candidates:
                    findings[_str(device, "id")].append(
                        _Finding(ComplianceStatus.UNKNOWN, reason, when)
                    )
            else:
                status = _PROFILE_STATUS.get(raw.casefold(), ComplianceStatus.UNKNOWN)
                findings[_str(candidates[0], "id")].append(
                    _Finding(status, f"profile status={raw}", when)
                )
        if unmatched:
            log.info(
                "intune %s: %d profile status rows match no managed device",
                self.integration.tenant_id,
                unmatched,
            )

    async def probe(self) -> Sent:
        params = {"$top": "1", "$select": "id"}
        _, sent = await self.session.request("GET", MANAGED_DEVICES, params=params)
        return sent

    # --- writes ---------------------------------------------------------------------------

    async def force_sync(self, device_id: str) -> Sent:
        path = f"{MANAGED_DEVICES}/{_segment(device_id, 'device_id')}/syncDevice"
        response, sent = await self.session.request("POST", path)
        _expect(response, sent, {204})
        return sent

    async def update_profile(self, name: str, mobileconfig: bytes) -> Sent:
        """Replace the custom configuration's payload; Intune redeploys it to assigned Macs."""
        if self.integration.profile_id is None:
            raise ValueError("update_profile needs the integration's profile_id")
        path = f"{CONFIGURATIONS}/{_segment(self.integration.profile_id, 'profile_id')}"
        body = {
            "@odata.type": MACOS_CUSTOM,
            "payloadName": name,
            "payloadFileName": f"{self.integration.payload_identifier}.mobileconfig",
            "payload": base64.b64encode(mobileconfig).decode("ascii"),
        }
        response, sent = await self.session.request("PATCH", path, json=body)
        _expect(response, sent, {200, 204})
        return sent

    # --- helpers --------------------------------------------------------------------------

    async def _list(self, path: str, params: Mapping[str, str] | None) -> list[Mapping[str, Any]]:
        """Every item of a Graph collection, following ``@odata.nextLink`` as given."""
        items: list[Mapping[str, Any]] = []
        response, sent = await self.session.request("GET", path, params=params)
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            body = _expect_json(response, sent)
            value = body.get("value")
            if not isinstance(value, list):
                raise MdmError(
                    f"{sent.request}: no 'value' list in the answer", request=sent.request
                )
            items.extend(v for v in value if isinstance(v, Mapping))
            next_link = body.get("@odata.nextLink")
            if not next_link:
                return items
            if not isinstance(next_link, str) or next_link in seen:
                raise MdmError(f"{sent.request}: paging link repeats", request=sent.request)
            seen.add(next_link)
            response, sent = await self.session.request("GET", path, absolute_url=next_link)
        raise MdmError(f"{sent.request}: more than {_MAX_PAGES} pages", request=sent.request)

    async def _managed_devices(self, params: Mapping[str, str]) -> list[Mapping[str, Any]]:
        """Managed devices with an id, each once (a page boundary may repeat an item)."""
        unique: dict[str, Mapping[str, Any]] = {}
        for item in await self._list(MANAGED_DEVICES, params):
            unique.setdefault(_str(item, "id"), item)
        unique.pop("", None)
        return list(unique.values())

    def _device(self, item: Mapping[str, Any]) -> Device:
        return Device(
            tenant_id=self.integration.tenant_id,
            vendor=Vendor.INTUNE,
            device_id=_str(item, "id"),
            serial_number=_serial(item),
            last_contact=_when(item.get("lastSyncDateTime")),
        )


@dataclass(frozen=True)
class _Finding:
    status: ComplianceStatus
    reason: str
    reported_at: datetime | None


def _segment(value: str, what: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError(f"{what} is not a Graph id: {value!r}")
    return quote(value, safe="")


def _str(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


def _norm(value: str) -> str:
    return value.strip().casefold()


def _same_user(row_upn: str, device_upn: str) -> bool:
    """Users narrow the join only when both sides name one (userless Macs have none)."""
    return not (row_upn and device_upn) or row_upn == device_upn


def _serial(item: Mapping[str, Any]) -> str | None:
    """Graph sends ``""`` for a device without a serial; that is no serial."""
    return _str(item, "serialNumber").strip() or None


def _when(value: Any) -> datetime | None:
    """A Graph timestamp; ``0001-01-01T00:00:00Z`` is Graph's "never" and counts as absent."""
    parsed = vendor_time(value)
    return None if parsed is None or parsed.year <= 1 else parsed


def _expect(response: httpx.Response, sent: Sent, statuses: set[int]) -> None:
    if response.status_code not in statuses:
        raise MdmError(
            f"{sent.request} -> {response.status_code}, expected {sorted(statuses)}",
            status=response.status_code,
            request=sent.request,
        )


def _expect_json(response: httpx.Response, sent: Sent) -> Mapping[str, Any]:
    _expect(response, sent, {200})
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping):
        raise MdmError(f"{sent.request}: answer is not a JSON object", request=sent.request)
    return body
