"""Who sent a refused request, from at most a prefix of its body and within a fixed budget.

A request without a valid token is answered 401 without its body being read whole; to still
attribute the rejection to an endpoint (a laptop with a stale token is what ``stale_token``
looks for), the receiver keeps a small prefix (``PREFIX_BYTES``) and looks for an identity in
the resources that lie whole inside it. The work is bounded three ways: the prefix size, a
number of resources, and a time budget checked between resources. Anything that does not
parse is simply not attributed: an attacker gets no more than a few hundred microseconds of the
loop per request (and a per-source budget caps how many requests get even that).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from ingest.codec import MalformedRequest, decode_json, decode_protobuf
from ingest.snapshots import ExportRequest, Limits, identity_of

PREFIX_BYTES: Final = 64 * 1024  # of an unauthenticated body, kept for attribution
MAX_RESOURCES: Final = 32  # resources looked at per refused request
TIME_BUDGET: Final = 0.002  # seconds of loop time per refused request, checked per resource
_LEN: Final = 2  # protobuf wire type "length-delimited"


def attribute(
    prefix: bytes,
    request_type: type,
    is_json: bool,
    complete: bool,
    identity_attributes: Sequence[str],
    limits: Limits,
    max_resources: int = MAX_RESOURCES,
    budget: float = TIME_BUDGET,
) -> str | None:
    """The identity of the first attributable resource in ``prefix``, or None.

    ``complete`` says whether ``prefix`` is the whole (decoded) body. OTLP/JSON is attributed
    only when it is: a cut JSON document has no parse. Protobuf is cut at the last resource
    that lies whole inside the prefix, so a truncated body still attributes.
    """
    deadline = time.perf_counter() + budget
    request: ExportRequest
    try:
        if is_json:
            if not complete or len(prefix) > PREFIX_BYTES:
                return None
            request = decode_json(prefix, request_type)
        else:
            request = decode_protobuf(_whole_resources(prefix, max_resources), request_type)
    except MalformedRequest:
        return None
    return identity_of(request, identity_attributes, limits, max_resources, deadline)


def _whole_resources(data: bytes, max_resources: int) -> bytes:
    """The leading field-1 entries (resource_metrics / _logs / _spans) that ``data`` holds
    whole, at most ``max_resources``, as a message of their own; other fields are skipped."""
    position = 0
    end = 0
    found = 0
    size = min(len(data), PREFIX_BYTES)
    while position < size and found < max_resources:
        try:
            tag, position = _varint(data, position, size)
            if tag & 7 != _LEN:
                break  # every field of an export request is length-delimited
            length, position = _varint(data, position, size)
        except IndexError:
            break
        position += length
        if position > size:
            break
        end = position
        found += tag >> 3 == 1
    return data[:end]


def _varint(data: bytes, position: int, size: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 64, 7):
        if position >= size:
            raise IndexError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
    raise IndexError("varint too long")
