"""The long-running commands: `run`, `ingest`, `processors worker`, `sink`."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from driftline.cli.common import (
    ACTIONS_FLAGS,
    RECEIVER_FLAGS,
    add_setting_flags,
    clickhouse_of,
    settings_of,
)

# gRPC's EventEngine listener and endpoints hand every read from an I/O thread to the thread
# that polls for grpc.aio, a context switch per call; the older polling path does the I/O on
# that thread. Measured on 2 cores, one receiver process, 2.9 KB exports: an empty grpc.aio
# handler went from 0.381 to 0.304 ms of CPU per call paced at 1,500/s (0.284 to 0.252
# saturated), and Driftline's receiver into Kafka from 0.571 to 0.511 ms. Read by gRPC's
# core once, at import, so set before anything imports grpc; GRPC_EXPERIMENTS in the
# environment wins.
GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"


def _grpc_defaults() -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)


def _cmd_ingest(args: argparse.Namespace) -> int:
    _grpc_defaults()
    from driftline import ingest_runner
    from ingest.tokens import TokenStore

    settings = settings_of(args)
    ingest_runner.tls_options(settings)  # a half-configured TLS fails here, not in workers
    if not TokenStore(settings.token_registry).records():
        logging.warning(
            "no ingest tokens yet in %s: create one with `driftline tokens create --tenant NAME`",
            settings.token_registry,
        )
    ingest_runner.run(settings)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    _grpc_defaults()
    import uvloop

    from driftline import embedded

    uvloop.run(embedded.run(settings_of(args)))
    return 0


def _cmd_processors_worker(args: argparse.Namespace) -> int:
    from driftline.processors_runner import run_worker

    settings = settings_of(args)
    run_worker(
        settings.bootstrap,
        settings.data / "processors",
        partitions=args.partitions,
        app_id=args.app_id,
        recovery_stall=settings.recovery_stall,
    )
    return 0


def _cmd_sink(args: argparse.Namespace) -> int:
    from driftline.datadir import dead_letter_path, store_path
    from store.sink import SinkOptions, serve

    settings = settings_of(args)
    serve(
        settings.bootstrap,
        clickhouse_of(args) or f"chdb://{store_path(settings.data).resolve()}",
        SinkOptions(
            group_id=args.group,
            dead_letter=dead_letter_path(settings.data),
            last_seen_resolution=settings.last_seen_resolution,
        ),
    )
    return 0


def add_commands(commands: Any) -> None:
    ingest = commands.add_parser(
        "ingest",
        help="run the OTLP receiver (gRPC :4317, HTTP :4318, admin :8888)",
        description="Authenticate OTLP exports by tenant token and publish one endpoint "
        "snapshot per resource to the bus.",
    )
    add_setting_flags(ingest, *RECEIVER_FLAGS)
    ingest.set_defaults(func=_cmd_ingest)

    run = commands.add_parser(
        "run",
        help="the embedded pipeline: receiver + detectors + store in one process, no Kafka",
        description="Receive OTLP, detect drift and keep history in the embedded ClickHouse "
        "(chDB) under --data. State survives restarts.",
    )
    receiver = (f for f in RECEIVER_FLAGS if f not in ("--bus", "--bootstrap", "--workers"))
    add_setting_flags(run, *receiver, *ACTIONS_FLAGS)
    run.set_defaults(func=_cmd_run)

    processors = commands.add_parser("processors", help="drift processors on Kafka (Faust workers)")
    processor_commands = processors.add_subparsers(
        dest="processors_command", required=True, metavar="ACTION"
    )
    worker = processor_commands.add_parser(
        "worker", help="run one worker; start several to share the partitions"
    )
    add_setting_flags(worker, "--data", "--bootstrap")
    worker.add_argument("--partitions", type=int, default=12, help="must match the input topics")
    worker.add_argument("--app-id", default="driftline-processors")
    worker.set_defaults(func=_cmd_processors_worker)

    sink = commands.add_parser(
        "sink", help="write Kafka snapshots, auth events and flags to ClickHouse"
    )
    add_setting_flags(sink, "--data", "--bootstrap")
    sink.add_argument(
        "--clickhouse",
        default=None,
        help="DSN (DRIFTLINE_CLICKHOUSE; default chdb://DATA/clickhouse, a server in production)",
    )
    sink.add_argument("--group", default="driftline-sink", help="Kafka consumer group")
    sink.set_defaults(func=_cmd_sink)
