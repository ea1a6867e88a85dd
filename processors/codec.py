"""EndpointState ⇄ compact JSON bytes: the value format of the processors' Faust table.

Every table write is also a changelog message, so the encoding is small (one-letter keys, times
as integer microseconds since the epoch, empty fields left out) and exact: ``decode(encode(s))
== s`` for every state, because a takeover rebuilds state from these bytes and flag ids hash
the times in it. Decoding re-interns attribute key sets, service names and versions, so a
recovered table shares them the way a live one does.

Next to the state, a table value carries ``policy``: a fingerprint of the tenant policy the
state was last evaluated under. Comparing it with the current policy tells a worker which
endpoints still need a re-evaluation after a policy change or a takeover, without a policy
history.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from processors.state import EndpointState, OpenFlag, Sighting, intern_keys, intern_text
from schemas.messages import FlagKind

FORMAT: Final = 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_KINDS: Final = {kind.value: kind for kind in FlagKind}


class CodecError(ValueError):
    """Bytes that are not a table value of a format this code reads."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A table value: the endpoint's state and the fingerprint of the policy it reflects."""

    state: EndpointState
    policy: str = ""


def to_micros(moment: datetime) -> int:
    """Exact for any aware datetime (naive ones are read as UTC, like everywhere else)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def encode(state: EndpointState, policy: str = "") -> bytes:
    """The table value for ``state`` evaluated under the policy fingerprinted ``policy``."""
    data: dict[str, Any] = {
        "v": FORMAT,
        "t": state.tenant_id,
        "e": state.endpoint_id,
        "l": to_micros(state.last_event_at),
    }
    if state.snapshot_at is not None:
        data["s"] = to_micros(state.snapshot_at)
    if state.service_name is not None:
        data["n"] = state.service_name
    if state.app_version is not None:
        data["a"] = state.app_version
    if state.attributes:
        data["k"] = sorted(state.attributes)
    if state.others:  # other tools on the endpoint; absent for the usual single one
        data["o"] = [
            [
                other.service_name,
                other.app_version,
                sorted(other.attributes),
                to_micros(other.seen_at),
            ]
            for other in state.others
        ]
    if state.rejections:
        data["r"] = [to_micros(moment) for moment in state.rejections]
    if state.open_flags:
        data["f"] = [
            [flag.kind.value, flag.flag_id, to_micros(flag.first_seen), flag.detail]
            for flag in state.open_flags
        ]
    if policy:
        data["p"] = policy
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def decode_stored(data: bytes) -> Stored:
    """Read a table value; anything malformed is one ``CodecError``."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("v") != FORMAT:
            raise CodecError(f"not an endpoint state of format {FORMAT}")
        snapshot_at = raw.get("s")
        state = EndpointState(
            tenant_id=sys.intern(_text(raw["t"])),
            endpoint_id=_text(raw["e"]),
            last_event_at=from_micros(_int(raw["l"])),
            snapshot_at=None if snapshot_at is None else from_micros(_int(snapshot_at)),
            service_name=intern_text(_optional_text(raw.get("n"))),
            app_version=intern_text(_optional_text(raw.get("a"))),
            attributes=intern_keys(_text(key) for key in raw.get("k", ())),
            others=tuple(_sighting(other) for other in raw.get("o", ())),
            rejections=tuple(from_micros(_int(moment)) for moment in raw.get("r", ())),
            open_flags=tuple(_open_flag(flag) for flag in raw.get("f", ())),
        )
        return Stored(state, _text(raw.get("p", "")))
    except CodecError:
        raise
    except (ValueError, KeyError, TypeError, OverflowError) as error:
        raise CodecError(f"malformed endpoint state: {error!r}") from None


def decode(data: bytes) -> EndpointState:
    return decode_stored(data).state


def _sighting(raw: object) -> Sighting:
    if not isinstance(raw, list) or len(raw) != 4 or not isinstance(raw[2], list):
        raise CodecError(f"malformed sighting {raw!r}")
    service, version, keys, seen_at = raw
    return Sighting(
        sys.intern(_text(service)),
        intern_text(_optional_text(version)),
        intern_keys(_text(key) for key in keys),
        from_micros(_int(seen_at)),
    )


def _open_flag(raw: object) -> OpenFlag:
    if not isinstance(raw, list) or len(raw) != 4:
        raise CodecError(f"malformed open flag {raw!r}")
    kind, flag_id, first_seen, detail = raw
    if kind not in _KINDS:
        raise CodecError(f"unknown flag kind {kind!r}")
    return OpenFlag(_KINDS[kind], _text(flag_id), from_micros(_int(first_seen)), _text(detail))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise CodecError(f"expected a string, got {value!r}")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"expected an integer, got {value!r}")
    return value
