"""OTLP/JSON decoding against the spec's rules, real SDK output and json_format as the oracle."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.metrics import Observation
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ingest.otlp_json import MAX_MESSAGE_DEPTH, OtlpJsonError, decode_request, encode_response

REQUEST_TYPES = (ExportTraceServiceRequest, ExportMetricsServiceRequest, ExportLogsServiceRequest)

TRACE_ID = "5B8EFFF798038103D269B633813FC60C"  # upper case, as in the spec's examples
SPAN_ID = "EEE19B7EC3C1B174"
PARENT_ID = "eee19b7ec3c1b173"
LINK_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
LINK_SPAN_ID = "b7ad6b7169203331"
SPAN = "resourceSpans[0].scopeSpans[0].spans[0]"  # the JSON path of trace_body()'s first span


def attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


# --- hand-written bodies in the shape OpenTelemetry JS and the Collector send ------------------


def trace_body() -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        attr("service.name", {"stringValue": "checkout"}),
                        attr("telemetry.sdk.language", {"stringValue": "nodejs"}),
                        attr("process.pid", {"intValue": 4242}),
                    ],
                    "droppedAttributesCount": 0,
                },
                "scopeSpans": [
                    {
                        "scope": {
                            "name": "@opentelemetry/instrumentation-http",
                            "version": "0.57.0",
                        },
                        "spans": [
                            {
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                                "parentSpanId": PARENT_ID,
                                "traceState": "vendor=1",
                                "name": "POST /cart",
                                "kind": 2,
                                "startTimeUnixNano": "1760000000000000000",
                                "endTimeUnixNano": 1760000000250000000,
                                "flags": 257,
                                "attributes": [
                                    attr("http.status_code", {"intValue": "200"}),
                                    attr("http.url", {"stringValue": "https://shop/cart"}),
                                    attr("retry", {"boolValue": False}),
                                    attr("ratio", {"doubleValue": 0.25}),
                                    attr("blob", {"bytesValue": "3q2+7w=="}),
                                    attr(
                                        "tags",
                                        {
                                            "arrayValue": {
                                                "values": [{"stringValue": "a"}, {"intValue": 7}]
                                            }
                                        },
                                    ),
                                    attr(
                                        "user",
                                        {
                                            "kvlistValue": {
                                                "values": [attr("id", {"stringValue": "u-1"})]
                                            }
                                        },
                                    ),
                                ],
                                "droppedAttributesCount": 0,
                                "events": [
                                    {
                                        "timeUnixNano": "1760000000100000000",
                                        "name": "exception",
                                        "attributes": [
                                            attr("exception.type", {"stringValue": "Timeout"})
                                        ],
                                        "droppedAttributesCount": 0,
                                    }
                                ],
                                "droppedEventsCount": 0,
                                "links": [
                                    {
                                        "traceId": LINK_TRACE_ID,
                                        "spanId": LINK_SPAN_ID,
                                        "attributes": [],
                                        "droppedAttributesCount": 0,
                                        "flags": 256,
                                    }
                                ],
                                "droppedLinksCount": 0,
                                "status": {"code": 2, "message": "upstream timeout"},
                            },
                            {
                                "traceId": TRACE_ID,
                                "spanId": PARENT_ID,
                                "parentSpanId": "",
                                "name": "root",
                                "kind": 1,
                                "startTimeUnixNano": "1760000000000000000",
                                "endTimeUnixNano": "1760000000300000000",
                                "status": {},
                            },
                        ],
                    }
                ],
                "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
            }
        ]
    }


def metrics_body() -> dict[str, Any]:
    def exemplar() -> dict[str, Any]:
        return {
            "timeUnixNano": "1760000030000000000",
            "asDouble": 0.5,
            "traceId": TRACE_ID,
            "spanId": SPAN_ID,
            "filteredAttributes": [attr("user.id", {"stringValue": "u-1"})],
        }

    def common() -> dict[str, Any]:
        return {
            "attributes": [attr("model", {"stringValue": "sonnet"})],
            "startTimeUnixNano": "1760000000000000000",
            "timeUnixNano": "1760000060000000000",
        }

    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": [attr("service.name", {"stringValue": "claude-code"})]},
                "scopeMetrics": [
                    {
                        "scope": {"name": "com.anthropic.claude_code", "version": "2.0.3"},
                        "metrics": [
                            {
                                "name": "token.usage",
                                "unit": "tokens",
                                "description": "tokens used",
                                "sum": {
                                    "aggregationTemporality": 1,
                                    "isMonotonic": True,
                                    "dataPoints": [
                                        {**common(), "asDouble": 1234, "exemplars": [exemplar()]}
                                    ],
                                },
                            },
                            {
                                "name": "sessions.active",
                                "gauge": {
                                    "dataPoints": [
                                        {**common(), "asInt": "3", "exemplars": [exemplar()]}
                                    ]
                                },
                            },
                            {
                                "name": "request.duration",
                                "unit": "ms",
                                "histogram": {
                                    "aggregationTemporality": 2,
                                    "dataPoints": [
                                        {
                                            **common(),
                                            "count": "7",
                                            "sum": 1520.5,
                                            "bucketCounts": ["0", "2", 3, "2", "0"],
                                            "explicitBounds": [10, 100.5, 250, 1000],
                                            "min": 8.5,
                                            "max": 880,
                                            "exemplars": [exemplar()],
                                            "flags": 0,
                                        }
                                    ],
                                },
                            },
                            {
                                "name": "request.size",
                                "exponentialHistogram": {
                                    "aggregationTemporality": 2,
                                    "dataPoints": [
                                        {
                                            **common(),
                                            "count": "4",
                                            "sum": 10,
                                            "scale": -2,
                                            "zeroCount": "1",
                                            "positive": {"offset": -1, "bucketCounts": ["1", "2"]},
                                            "negative": {},
                                            "exemplars": [exemplar()],
                                        }
                                    ],
                                },
                            },
                            {
                                "name": "latency.summary",
                                "summary": {
                                    "dataPoints": [
                                        {
                                            **common(),
                                            "count": "2",
                                            "sum": 3,
                                            "quantileValues": [
                                                {"quantile": 0.5, "value": 1},
                                                {"quantile": 1, "value": "Infinity"},
                                            ],
                                        }
                                    ]
                                },
                            },
                        ],
                    }
                ],
            }
        ]
    }


def logs_body() -> dict[str, Any]:
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": [attr("service.name", {"stringValue": "claude-code"})]},
                "scopeLogs": [
                    {
                        "scope": {"name": "com.anthropic.claude_code.events", "version": "2.0.3"},
                        "logRecords": [
                            {
                                "timeUnixNano": "1760000000300000000",
                                "observedTimeUnixNano": 1760000000400000000,
                                "severityNumber": 9,
                                "severityText": "INFO",
                                "eventName": "claude_code.tool_result",
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                                "flags": 1,
                                "body": {
                                    "kvlistValue": {
                                        "values": [
                                            attr("tool", {"stringValue": "Bash"}),
                                            attr("ok", {"boolValue": True}),
                                        ]
                                    }
                                },
                                "attributes": [attr("duration_ms", {"doubleValue": "12.5"})],
                                "droppedAttributesCount": 0,
                            },
                            {"body": {"stringValue": "no ids here"}, "traceId": "", "spanId": ""},
                        ],
                    }
                ],
            }
        ]
    }


BODIES: dict[type[Message], Callable[[], dict[str, Any]]] = {
    ExportTraceServiceRequest: trace_body,
    ExportMetricsServiceRequest: metrics_body,
    ExportLogsServiceRequest: logs_body,
}


def encode(tree: object) -> bytes:
    return json.dumps(tree).encode()


# --- test-side helpers that apply the spec's rules independently of the code under test -------

ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def objects(tree: object) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def to_otlp_json(message: Message, *, snake_case: bool = False) -> bytes:
    """proto3 JSON plus the spec's deviations: ids in hex, enums as integers."""
    tree = json_format.MessageToDict(
        message, use_integers_for_enums=True, preserving_proto_field_name=snake_case
    )
    for node in objects(tree):
        for key in ID_KEYS & node.keys():
            node[key] = base64.b64decode(node[key]).hex()
    return encode(tree)


def reference_decode(body: bytes, message_type: type[Message]) -> Message:
    """json_format on the body with hex ids turned back into base64."""
    tree = json.loads(body)
    for node in objects(tree):
        for key in ID_KEYS & node.keys():
            # ids the decoder accepted; anything else sits where no id field is
            with contextlib.suppress(TypeError, ValueError):
                node[key] = base64.b64encode(bytes.fromhex(node[key])).decode()
    return json_format.ParseDict(
        tree, message_type(), ignore_unknown_fields=True, max_recursion_depth=1000
    )


def snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name)


def to_snake_case(tree: object) -> object:
    if isinstance(tree, dict):
        return {snake(k): to_snake_case(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_snake_case(v) for v in tree]
    return tree


# --- decoding client JSON ----------------------------------------------------------------------


def test_trace_fields() -> None:
    request = decode_request(encode(trace_body()), ExportTraceServiceRequest)
    resource_spans = request.resource_spans[0]
    assert resource_spans.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    assert resource_spans.resource.attributes[2].value.int_value == 4242
    span, root = resource_spans.scope_spans[0].spans
    assert span.trace_id == bytes.fromhex(TRACE_ID) and len(span.trace_id) == 16
    assert span.span_id == bytes.fromhex(SPAN_ID) and len(span.span_id) == 8
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert root.parent_span_id == b""
    assert span.kind == 2 and root.kind == 1
    assert span.start_time_unix_nano == 1760000000000000000
    assert span.end_time_unix_nano == 1760000000250000000
    assert span.flags == 257
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["http.status_code"].int_value == 200
    assert attributes["retry"].HasField("bool_value") and not attributes["retry"].bool_value
    assert attributes["ratio"].double_value == 0.25
    assert attributes["blob"].bytes_value == b"\xde\xad\xbe\xef"  # base64, unlike the ids
    assert [v.string_value or v.int_value for v in attributes["tags"].array_value.values] == [
        "a",
        7,
    ]
    assert attributes["user"].kvlist_value.values[0].value.string_value == "u-1"
    [link] = span.links
    assert (link.trace_id.hex(), link.span_id.hex()) == (LINK_TRACE_ID, LINK_SPAN_ID)
    assert link.flags == 256
    assert span.events[0].time_unix_nano == 1760000000100000000
    assert (span.status.code, span.status.message) == (2, "upstream timeout")
    assert root.HasField("status")  # an empty object still sets the message


def test_metrics_fields() -> None:
    request = decode_request(encode(metrics_body()), ExportMetricsServiceRequest)
    total, gauge, histogram, exponential, summary = (
        request.resource_metrics[0].scope_metrics[0].metrics
    )
    assert total.sum.aggregation_temporality == 1 and total.sum.is_monotonic
    assert total.sum.data_points[0].as_double == 1234.0
    assert gauge.gauge.data_points[0].as_int == 3
    assert gauge.gauge.data_points[0].WhichOneof("value") == "as_int"
    point = histogram.histogram.data_points[0]
    assert point.count == 7 and point.sum == 1520.5
    assert list(point.bucket_counts) == [0, 2, 3, 2, 0]
    assert list(point.explicit_bounds) == [10.0, 100.5, 250.0, 1000.0]
    assert (point.min, point.max) == (8.5, 880.0)
    assert point.start_time_unix_nano == 1760000000000000000
    exp_point = exponential.exponential_histogram.data_points[0]
    assert (exp_point.scale, exp_point.zero_count) == (-2, 1)
    assert (exp_point.positive.offset, list(exp_point.positive.bucket_counts)) == (-1, [1, 2])
    assert exp_point.HasField("negative")
    quantiles = summary.summary.data_points[0].quantile_values
    assert quantiles[1].value == float("inf")
    for data_point in (
        total.sum,
        gauge.gauge,
        histogram.histogram,
        exponential.exponential_histogram,
    ):
        exemplar = data_point.data_points[0].exemplars[0]
        assert exemplar.trace_id == bytes.fromhex(TRACE_ID)
        assert exemplar.span_id == bytes.fromhex(SPAN_ID)
        assert exemplar.filtered_attributes[0].value.string_value == "u-1"


def test_logs_fields() -> None:
    request = decode_request(encode(logs_body()), ExportLogsServiceRequest)
    record, bare = request.resource_logs[0].scope_logs[0].log_records
    assert record.time_unix_nano == 1760000000300000000
    assert record.observed_time_unix_nano == 1760000000400000000
    assert (record.severity_number, record.severity_text) == (9, "INFO")
    assert record.event_name == "claude_code.tool_result"
    assert record.trace_id == bytes.fromhex(TRACE_ID)
    assert record.span_id == bytes.fromhex(SPAN_ID)
    assert record.flags == 1
    assert record.body.kvlist_value.values[1].value.bool_value is True
    assert record.attributes[0].value.double_value == 12.5
    assert (bare.trace_id, bare.span_id) == (b"", b"")


@pytest.mark.parametrize("message_type", REQUEST_TYPES)
def test_agrees_with_json_format(message_type: type[Message]) -> None:
    body = encode(BODIES[message_type]())
    assert decode_request(body, message_type) == reference_decode(body, message_type)


@pytest.mark.parametrize("message_type", REQUEST_TYPES)
def test_snake_case_keys_are_accepted(message_type: type[Message]) -> None:
    camel = decode_request(encode(BODIES[message_type]()), message_type)
    assert decode_request(encode(to_snake_case(BODIES[message_type]())), message_type) == camel


def test_mixed_key_spellings() -> None:
    body = trace_body()
    span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["parent_span_id"] = span.pop("parentSpanId")
    span["start_time_unix_nano"] = span.pop("startTimeUnixNano")
    body["resourceSpans"][0]["scope_spans"] = body["resourceSpans"][0].pop("scopeSpans")
    expected = decode_request(encode(trace_body()), ExportTraceServiceRequest)
    assert decode_request(encode(body), ExportTraceServiceRequest) == expected


@pytest.mark.parametrize("message_type", REQUEST_TYPES)
def test_unknown_fields_are_ignored_at_every_level(message_type: type[Message]) -> None:
    body = BODIES[message_type]()
    expected = decode_request(encode(body), message_type)
    count = 0
    for node in list(objects(body)):
        node["futureField"] = {"nested": [1, {"traceId": "not hex"}], "kind": "x"}
        node["future_scalar"] = 3
        count += 1
    assert count >= 18  # every object, down to AnyValues inside kvlists
    assert decode_request(encode(body), message_type) == expected


def test_enum_names_are_tolerated() -> None:
    body = trace_body()
    span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["kind"] = "SPAN_KIND_CLIENT"
    span["status"]["code"] = "STATUS_CODE_OK"
    decoded = decode_request(encode(body), ExportTraceServiceRequest)
    assert decoded.resource_spans[0].scope_spans[0].spans[0].kind == 3
    assert decoded.resource_spans[0].scope_spans[0].spans[0].status.code == 1
    span["kind"] = "SPAN_KIND_FROM_THE_FUTURE"  # ignored, like an unknown field
    span["status"]["code"] = 17  # OTLP enums are open: unknown numbers are kept
    decoded = decode_request(encode(body), ExportTraceServiceRequest)
    assert decoded.resource_spans[0].scope_spans[0].spans[0].kind == 0
    assert decoded.resource_spans[0].scope_spans[0].spans[0].status.code == 17


def test_null_means_unset_and_bom_is_skipped() -> None:
    body = trace_body()
    span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span.update(traceId=None, parentSpanId=None, status=None, links=None, kind=None)
    decoded = decode_request(b"\xef\xbb\xbf" + encode(body), ExportTraceServiceRequest)
    span_pb = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert span_pb.trace_id == b"" and span_pb.parent_span_id == b""
    assert not span_pb.HasField("status") and not span_pb.links and span_pb.kind == 0


def test_number_spellings() -> None:
    body = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "gauge": {
                                    "dataPoints": [
                                        {"timeUnixNano": "1.76e18", "asDouble": "-Infinity"},
                                        {"timeUnixNano": 1.5e3, "asDouble": "NaN"},
                                        {"timeUnixNano": "18446744073709551615", "asInt": "-5"},
                                    ]
                                }
                            }
                        ]
                    }
                ]
            }
        ]
    }
    points = decode_request(encode(body), ExportMetricsServiceRequest).resource_metrics[0]
    first, second, third = points.scope_metrics[0].metrics[0].gauge.data_points
    assert (first.time_unix_nano, first.as_double) == (1760000000000000000, float("-inf"))
    assert second.time_unix_nano == 1500 and second.as_double != second.as_double
    assert (third.time_unix_nano, third.as_int) == (2**64 - 1, -5)


@pytest.mark.parametrize("text", ["3q2+7w==", "3q2+7w", "3q2-7w==", "3q2-7w", "3q2+7w="])
def test_bytes_value_takes_either_base64_alphabet(text: str) -> None:
    body = trace_body()
    set_at(body, f"{SPAN}.attributes[4].value.bytesValue", text)
    decoded = decode_request(encode(body), ExportTraceServiceRequest)
    attribute = decoded.resource_spans[0].scope_spans[0].spans[0].attributes[4]
    assert attribute.value.bytes_value == b"\xde\xad\xbe\xef"


def test_empty_bodies() -> None:
    assert decode_request(b"{}", ExportTraceServiceRequest) == ExportTraceServiceRequest()
    assert decode_request(b' {"resourceLogs": []} ', ExportLogsServiceRequest) == (
        ExportLogsServiceRequest()
    )


def test_other_message_types_are_a_programming_error() -> None:
    with pytest.raises(TypeError):
        decode_request(b"{}", ExportTraceServiceResponse)


# --- the id fields the spec makes hex, found from the schema ------------------------------------


def bytes_fields(descriptor: Descriptor, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    found: set[str] = set()
    if descriptor.full_name in seen:
        return found
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_BYTES:
            found.add(field.full_name)
        if field.message_type is not None:
            found |= bytes_fields(field.message_type, seen)
    return found


def test_every_bytes_field_is_an_id_or_the_any_value_blob() -> None:
    """A new bytes field in a future OTLP release must be looked at, not guessed at."""
    found: set[str] = set()
    for message_type in REQUEST_TYPES:
        found |= bytes_fields(message_type.DESCRIPTOR)
    assert found == {
        "opentelemetry.proto.common.v1.AnyValue.bytes_value",
        "opentelemetry.proto.trace.v1.Span.trace_id",
        "opentelemetry.proto.trace.v1.Span.span_id",
        "opentelemetry.proto.trace.v1.Span.parent_span_id",
        "opentelemetry.proto.trace.v1.Span.Link.trace_id",
        "opentelemetry.proto.trace.v1.Span.Link.span_id",
        "opentelemetry.proto.logs.v1.LogRecord.trace_id",
        "opentelemetry.proto.logs.v1.LogRecord.span_id",
        "opentelemetry.proto.metrics.v1.Exemplar.trace_id",
        "opentelemetry.proto.metrics.v1.Exemplar.span_id",
    }


def id_locations() -> Iterator[tuple[type[Message], dict[str, Any], str, int]]:
    """(request type, body, path, digits) for every id the bodies above carry."""
    for message_type, make in BODIES.items():
        body = make()
        stack: list[tuple[object, str]] = [(body, "")]
        while stack:
            node, path = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    child = f"{path}.{key}" if path else key
                    if key in ID_KEYS and value:
                        yield message_type, body, child, 32 if key == "traceId" else 16
                    stack.append((value, child))
            elif isinstance(node, list):
                stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node))


ID_CASES = list(id_locations())


def test_id_cases_cover_every_location() -> None:
    paths = {re.sub(r"\[\d+\]", "[]", path) for _, _, path, _ in ID_CASES}
    # span 3 + link 2 + log record 2 + exemplar 2 in each of the 4 point types that have them
    assert len(paths) == 15


def set_at(tree: dict[str, Any], path: str, value: object) -> None:
    *parents, last = re.findall(r"[^.\[\]]+", path)
    node: Any = tree
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("abc", "not {digits} hex digits: 'abc'"),
        ("zz", "not {digits} hex digits"),
        ("+", "not {digits} hex digits"),
        (12, "expected a hex string, got a number"),
        ({"id": 1}, "expected a hex string, got an object"),
    ],
)
def test_bad_ids_name_their_path(bad: object, reason: str) -> None:
    for message_type, body, path, digits in ID_CASES:
        tree = copy.deepcopy(body)
        set_at(tree, path, bad)
        with pytest.raises(OtlpJsonError) as caught:
            decode_request(encode(tree), message_type)
        assert caught.value.path == path
        assert str(caught.value).startswith(f"{path}: {reason.format(digits=digits)}")


@pytest.mark.parametrize(
    "bad",
    [
        TRACE_ID[:-2],  # one byte short
        TRACE_ID + "00",
        TRACE_ID[:-1] + "g",
        TRACE_ID[:15] + " " + TRACE_ID[16:],  # bytes.fromhex would skip the space
        "0x" + TRACE_ID[2:],
        "\u0665" * 32,  # non-ASCII digits
    ],
)
def test_malformed_trace_ids(bad: str) -> None:
    body = trace_body()
    path = "resourceSpans[0].scopeSpans[0].spans[1].traceId"
    set_at(body, path, bad)
    with pytest.raises(OtlpJsonError, match=re.escape(f"{path}: not 32 hex digits")):
        decode_request(encode(body), ExportTraceServiceRequest)


def test_base64_id_gets_a_hint() -> None:
    body = logs_body()
    record = body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    record["spanId"] = base64.b64encode(bytes.fromhex(SPAN_ID)).decode()
    with pytest.raises(OtlpJsonError, match=r"logRecords\[0\]\.spanId: .*looks like base64"):
        decode_request(encode(body), ExportLogsServiceRequest)


# --- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"resourceSpans": "\xff"}', "body is not valid UTF-8 (byte 19)"),
        ('{"resourceSpans": []}'.encode("utf-16"), "body is not valid UTF-8"),
        (b'{"resourceSpans": "\xed\xa0\x80"}', "body is not valid UTF-8"),  # encoded surrogate
        (b"", "invalid JSON: Expecting value"),
        (b'{"resourceSpans": [', "invalid JSON"),
        (b"{} {}", "invalid JSON: Extra data"),
        (b'{"a": NaN}', "invalid JSON: NaN is not a JSON value"),
        (b'{"a": -Infinity}', "invalid JSON: -Infinity is not a JSON value"),
        (b'{"a": ' + b"1" * 5000 + b"}", "invalid JSON"),  # CPython's int digit limit
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested too deeply"),
        (b"[]", "top-level JSON value must be an object, got an array"),
        (b'"resourceSpans"', "top-level JSON value must be an object, got a string"),
        (b"null", "top-level JSON value must be an object, got null"),
        (b"1", "top-level JSON value must be an object, got a number"),
    ],
)
def test_unreadable_bodies(body: bytes, message: str) -> None:
    with pytest.raises(OtlpJsonError) as caught:
        decode_request(body, ExportTraceServiceRequest)
    assert str(caught.value).startswith(message)
    assert caught.value.path == ""


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("resourceSpans", {}, "resourceSpans: expected an array, got an object"),
        ("resourceSpans[0].scopeSpans", [1], "resourceSpans[0].scopeSpans[0]: expected an object"),
        ("resourceSpans[0].scopeSpans", [None], "scopeSpans[0]: expected an object, got null"),
        ("resourceSpans[0].resource", [], "resourceSpans[0].resource: expected an object"),
        (f"{SPAN}.name", 5, f"{SPAN}.name: expected a string, got a number"),
        (f"{SPAN}.kind", True, f"{SPAN}.kind: expected an integer (number or decimal string)"),
        (f"{SPAN}.kind", 2.5, f"{SPAN}.kind: not an integer: 2.5"),
        (f"{SPAN}.kind", 2**31, f"{SPAN}.kind: integer out of range"),
        (f"{SPAN}.startTimeUnixNano", "abc", f"{SPAN}.startTimeUnixNano: not an integer: 'abc'"),
        (f"{SPAN}.startTimeUnixNano", "1_000", f"{SPAN}.startTimeUnixNano: not an integer"),
        (f"{SPAN}.startTimeUnixNano", "\u0661\u0662", "startTimeUnixNano: not an integer"),
        (f"{SPAN}.startTimeUnixNano", "+5", "startTimeUnixNano: not an integer"),
        (f"{SPAN}.startTimeUnixNano", 1.5, f"{SPAN}.startTimeUnixNano: not an integer: 1.5"),
        (f"{SPAN}.startTimeUnixNano", -1, f"{SPAN}.startTimeUnixNano: integer out of range"),
        (f"{SPAN}.startTimeUnixNano", str(2**64), "startTimeUnixNano: integer out of range"),
        (f"{SPAN}.startTimeUnixNano", "9" * 40, "startTimeUnixNano: integer out of range"),
        (f"{SPAN}.startTimeUnixNano", [1], "startTimeUnixNano: expected an integer"),
        (f"{SPAN}.startTimeUnixNano", "1e400", "startTimeUnixNano: not an integer: '1e400'"),
        (f"{SPAN}.flags", 2**32, f"{SPAN}.flags: integer out of range [0, 4294967295]"),
        (f"{SPAN}.attributes", {"key": "a"}, f"{SPAN}.attributes: expected an array"),
        (f"{SPAN}.attributes[0].key", None, None),  # null is unset, not an error
        (f"{SPAN}.attributes[0].value", "x", f"{SPAN}.attributes[0].value: expected an object"),
        (f"{SPAN}.attributes[0].value.intValue", "12abc", "value.intValue: not an integer"),
        (f"{SPAN}.attributes[3].value.doubleValue", True, "doubleValue: expected a number"),
        (f"{SPAN}.attributes[3].value.doubleValue", "nan", "doubleValue: not a number"),
        (f"{SPAN}.attributes[3].value.doubleValue", "1e999", "doubleValue: number out of range"),
        (f"{SPAN}.attributes[3].value.doubleValue", 10**400, "doubleValue: number out of range"),
        (f"{SPAN}.attributes[2].value.boolValue", "true", "boolValue: expected true or false"),
        (f"{SPAN}.attributes[4].value.bytesValue", "3q2+7w=x", "bytesValue: not valid base64"),
        (f"{SPAN}.attributes[4].value.bytesValue", "A", "bytesValue: not valid base64"),
        (f"{SPAN}.attributes[4].value.bytesValue", 1, "bytesValue: expected a base64 string"),
        (f"{SPAN}.attributes[4].value.intValue", 1, "intValue: a second member of oneof 'value'"),
        (f"{SPAN}.attributes[1].value.stringValue", "\ud800", "stringValue: string is not valid"),
        (f"{SPAN}.events[0].attributes", [None], "events[0].attributes[0]: expected an object"),
        (f"{SPAN}.links[0].traceId", "", None),
        (f"{SPAN}.trace_id", "", f"{SPAN}.traceId: field also given as 'trace_id'"),
        (f"{SPAN}.status.code", "2", None),  # a numeric string is an integer too
    ],
)
def test_wrong_values_name_their_path(path: str, value: object, message: str | None) -> None:
    body = trace_body()
    set_at(body, path, value)
    if message is None:
        decode_request(encode(body), ExportTraceServiceRequest)
        return
    with pytest.raises(OtlpJsonError) as caught:
        decode_request(encode(body), ExportTraceServiceRequest)
    assert message in str(caught.value)
    assert str(caught.value).startswith(caught.value.path + ": ")


def test_repeated_scalar_items_name_their_index() -> None:
    body = metrics_body()
    points = "resourceMetrics[0].scopeMetrics[0].metrics[2].histogram.dataPoints[0]"
    set_at(body, f"{points}.bucketCounts", ["1", None])
    with pytest.raises(OtlpJsonError, match=re.escape(f"{points}.bucketCounts[1]: null is not")):
        decode_request(encode(body), ExportMetricsServiceRequest)
    body = metrics_body()
    set_at(body, f"{points}.explicitBounds", [1, "x"])
    with pytest.raises(OtlpJsonError, match=re.escape(f"{points}.explicitBounds[1]: not a numb")):
        decode_request(encode(body), ExportMetricsServiceRequest)


def test_long_values_are_cut_from_messages() -> None:
    body = trace_body()
    set_at(body, f"{SPAN}.attributes[3].value.doubleValue", "x" * 10_000)
    with pytest.raises(OtlpJsonError) as caught:
        decode_request(encode(body), ExportTraceServiceRequest)
    assert len(str(caught.value)) < 200
    assert len(OtlpJsonError("x" * 10_000).reason) == 300


# --- nesting ------------------------------------------------------------------------------------


def nested_value(levels: int, kind: str) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(levels - 1):
        if kind == "kvlist":
            value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
        else:
            value = {"arrayValue": {"values": [value]}}
    return value


def log_with_body(body: dict[str, Any]) -> bytes:
    return encode({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": body}]}]}]})


def exemplar_with_attribute(value: dict[str, Any]) -> bytes:
    exemplar = {"filteredAttributes": [{"key": "k", "value": value}]}
    point = {"exemplars": [exemplar]}
    metric = {"exponentialHistogram": {"dataPoints": [point]}}
    return encode({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})


@pytest.mark.parametrize(
    ("wrap", "message_type", "kind", "deepest"),
    [
        # A log body's AnyValue sits 4 messages below the request; an exemplar attribute's, 8.
        (log_with_body, ExportLogsServiceRequest, "kvlist", 33),
        (log_with_body, ExportLogsServiceRequest, "array", 49),
        (exemplar_with_attribute, ExportMetricsServiceRequest, "kvlist", 31),
        (exemplar_with_attribute, ExportMetricsServiceRequest, "array", 47),
    ],
)
def test_nesting_stops_where_binary_protobuf_does(
    wrap: Callable[[dict[str, Any]], bytes], message_type: type[Message], kind: str, deepest: int
) -> None:
    decoded = decode_request(wrap(nested_value(deepest, kind)), message_type)
    assert message_type.FromString(decoded.SerializeToString()) == decoded
    with pytest.raises(
        OtlpJsonError, match=f"nested deeper than protobuf's limit of {MAX_MESSAGE_DEPTH}"
    ):
        decode_request(wrap(nested_value(deepest + 1, kind)), message_type)


def test_deep_nesting_is_refused_unless_it_is_in_an_unknown_field() -> None:
    with pytest.raises(OtlpJsonError, match=r"^resourceLogs\[0\].*\.kvlistValue: nested deeper"):
        decode_request(log_with_body(nested_value(120, "kvlist")), ExportLogsServiceRequest)
    deep_unknown = {"resourceLogs": [], "future": nested_value(120, "kvlist")}
    assert decode_request(encode(deep_unknown), ExportLogsServiceRequest) == (
        ExportLogsServiceRequest()
    )


def test_binary_protobuf_depth_limit_matches() -> None:
    """The bound above mirrors upb's; if upb ever changes, this says so."""
    value = AnyValue(string_value="leaf")
    for _ in range(33):
        outer = AnyValue()
        outer.kvlist_value.values.add(key="k").value.CopyFrom(value)
        value = outer
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.CopyFrom(value)
    with pytest.raises(DecodeError):
        ExportLogsServiceRequest.FromString(request.SerializeToString())


# --- round trips through real SDK output ---------------------------------------------------------


def sdk_requests() -> dict[type[Message], Message]:
    resource = Resource.create({"service.name": "claude-code", "host.arch": "arm64"})
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = tracer_provider.get_tracer("driftline.test", "1.0")
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(
        metric_readers=[reader],
        resource=resource,
        views=[View(instrument_name="size", aggregation=ExponentialBucketHistogramAggregation())],
    )
    meter = meter_provider.get_meter("driftline.test", "1.0")
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    logger = logger_provider.get_logger("driftline.test", "1.0")

    counter = meter.create_counter("tokens", unit="tokens")
    histogram = meter.create_histogram("duration", unit="ms")
    size = meter.create_histogram("size")
    updown = meter.create_up_down_counter("sessions")
    meter.create_observable_gauge("temp", callbacks=[lambda _: [Observation(21.5, {"z": 1})]])
    with tracer.start_as_current_span("parent", attributes={"a": [1, 2], "b": True}) as parent:
        parent.add_event("step", {"n": 1.5})
        with tracer.start_as_current_span("child", kind=trace.SpanKind.CLIENT) as child:
            child.set_status(trace.StatusCode.ERROR, "boom")
            counter.add(5, {"type": "input"})
            histogram.record(12.5, {"model": "sonnet"})
            size.record(3.0)
            updown.add(-1)
            logger.emit(
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                body={"tool": "Bash", "args": ["ls", 1, None, {"deep": b"\x00\x01"}]},
                attributes={"ok": False, "ratio": 0.5},
                event_name="tool_result",
            )
    tracer.start_span("linked", links=[trace.Link(parent.get_span_context())]).end()
    metrics_data = reader.get_metrics_data()
    assert metrics_data is not None
    return {
        ExportTraceServiceRequest: encode_spans(spans.get_finished_spans()),
        ExportMetricsServiceRequest: encode_metrics(metrics_data),
        ExportLogsServiceRequest: encode_logs(logs.get_finished_logs()),
    }


@pytest.fixture(scope="module")
def sdk() -> dict[type[Message], Message]:
    return sdk_requests()


@pytest.mark.parametrize("message_type", REQUEST_TYPES)
@pytest.mark.parametrize("snake_case", [False, True])
def test_sdk_round_trip(
    sdk: dict[type[Message], Message], message_type: type[Message], snake_case: bool
) -> None:
    original = sdk[message_type]
    body = to_otlp_json(original, snake_case=snake_case)
    assert decode_request(body, message_type) == original


def test_sdk_content_has_what_the_round_trip_should_exercise(
    sdk: dict[type[Message], Message],
) -> None:
    trace_json = to_otlp_json(sdk[ExportTraceServiceRequest]).decode()
    metrics_json = to_otlp_json(sdk[ExportMetricsServiceRequest]).decode()
    logs_json = to_otlp_json(sdk[ExportLogsServiceRequest]).decode()
    assert re.search(r'"parentSpanId": "[0-9a-f]{16}"', trace_json)
    assert '"links": [{"traceId"' in trace_json
    assert re.search(r'"exemplars": \[\{.*"traceId": "[0-9a-f]{32}"', metrics_json)
    assert '"exponentialHistogram"' in metrics_json and '"gauge"' in metrics_json
    assert re.search(r'"traceId": "[0-9a-f]{32}"', logs_json)
    assert '"bytesValue": "AAE="' in logs_json


# --- properties ----------------------------------------------------------------------------------


def scalar_strategy(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_BYTES:
        if field.name in ("trace_id", "span_id", "parent_span_id"):
            size = 16 if field.name == "trace_id" else 8
            return st.just(b"") | st.binary(min_size=size, max_size=size)
        return st.binary(max_size=8)
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=6)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False)
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from(known) | st.integers(-(2**31), 2**31 - 1)
    bits = (
        32
        if field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32)
        else 64
    )
    if field.cpp_type in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@st.composite
def fill(draw: st.DrawFn, message: Message, budget: int) -> Message:
    """A random message: fields present at random, repeats up to 2, `budget` levels deep.

    The envelope levels get at least one item so that the leaves are reached.
    """
    for field in message.DESCRIPTOR.fields:
        if draw(st.integers(0, 2)) == 0:
            continue
        repeated = field.is_repeated  # protobuf >= 5.29
        if field.message_type is not None:
            if budget <= 0:
                continue
            if repeated:
                for _ in range(draw(st.integers(1 if budget > 5 else 0, 2))):
                    draw(fill(getattr(message, field.name).add(), budget - 1))
            else:
                sub = getattr(message, field.name)
                sub.SetInParent()
                draw(fill(sub, budget - 1))
        elif repeated:
            getattr(message, field.name).extend(draw(st.lists(scalar_strategy(field), max_size=3)))
        else:
            setattr(message, field.name, draw(scalar_strategy(field)))
    return message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(REQUEST_TYPES), st.booleans())
def test_random_messages_round_trip(
    data: st.DataObject, message_type: type[Message], snake_case: bool
) -> None:
    original = data.draw(fill(message_type(), 9))
    body = to_otlp_json(original, snake_case=snake_case)
    assert decode_request(body, message_type) == original


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_otlp_json_error(body: bytes) -> None:
    for message_type in REQUEST_TYPES:
        with contextlib.suppress(OtlpJsonError):
            decode_request(body, message_type)


FIELD_KEYS = sorted(
    {key for make in BODIES.values() for node in objects(make()) for key in node}
    | {"trace_id", "span_id", "scope_spans", "data_points", "as_double", "bytes_value"}
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", TRACE_ID, SPAN_ID, "NaN", "-Infinity", "1e3", "3q2-7w", "\ud800"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_KEYS) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_only_raises_otlp_json_error(tree: object) -> None:
    body = json.dumps(tree).encode("utf-8", "surrogatepass")
    for message_type in REQUEST_TYPES:
        with contextlib.suppress(OtlpJsonError):
            decode_request(body, message_type)


def json_paths(tree: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    yield path
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from json_paths(value, (*path, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from json_paths(value, (*path, index))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from(REQUEST_TYPES))
def test_mutated_bodies_agree_with_json_format(
    data: st.DataObject, message_type: type[Message]
) -> None:
    """Whatever the decoder accepts, json_format (given base64 ids) reads the same way."""
    tree = BODIES[message_type]()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(json_paths(tree))[1:]))
        parent: Any = tree
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = data.draw(json_values)
    body = json.dumps(tree).encode("utf-8", "surrogatepass")
    try:
        decoded = decode_request(body, message_type)
    except OtlpJsonError:
        return
    assert decoded == reference_decode(body, message_type)


# --- responses -----------------------------------------------------------------------------------


def test_encode_full_success() -> None:
    for response_type in (
        ExportTraceServiceResponse,
        ExportMetricsServiceResponse,
        ExportLogsServiceResponse,
    ):
        assert encode_response(response_type()) == b"{}"


def test_encode_partial_success() -> None:
    response = ExportMetricsServiceResponse()
    response.partial_success.rejected_data_points = 2
    response.partial_success.error_message = "2 points had no timestamp — «fixed» next time"
    body = encode_response(response)
    assert json.loads(body) == {
        "partialSuccess": {
            "rejectedDataPoints": "2",
            "errorMessage": "2 points had no timestamp — «fixed» next time",
        }
    }
    assert body.startswith(b'{"partialSuccess":{"rejectedDataPoints":"2","errorMessage":"2 ')
    logs = ExportLogsServiceResponse()
    logs.partial_success.rejected_log_records = 1
    assert encode_response(logs) == b'{"partialSuccess":{"rejectedLogRecords":"1"}}'
    spans = ExportTraceServiceResponse()
    spans.partial_success.error_message = "warning only"
    assert encode_response(spans) == b'{"partialSuccess":{"errorMessage":"warning only"}}'
    assert json_format.Parse(encode_response(response), ExportMetricsServiceResponse()) == response


def test_encode_refuses_messages_that_carry_ids() -> None:
    with pytest.raises(TypeError):
        encode_response(ExportTraceServiceRequest())
