"""`driftline kafka`: a local single-node Kafka broker for development."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_kafka(args: argparse.Namespace) -> int:
    from bus import kafka_local

    if args.kafka_command == "down":
        data = args.kafka_data or kafka_local.DEFAULT_DATA_DIR
        if not kafka_local.status(data).running:
            print(f"no broker running in {data}: nothing to stop")
            return 0
    argv = [args.kafka_command]
    if args.kafka_command == "up" and args.port is not None:
        argv += ["--port", str(args.port)]
    if args.kafka_data is not None:
        argv += ["--data", str(args.kafka_data)]
    return kafka_local.main(argv)


def add_commands(commands: Any) -> None:
    kafka = commands.add_parser("kafka", help="run a local single-node Kafka for development")
    kafka.add_argument("kafka_command", choices=["up", "down", "status"])
    kafka.add_argument("--port", type=int, default=None, help="default $KAFKA_PORT or 9092")
    kafka.add_argument("--kafka-data", type=Path, default=None, help="broker data directory")
    kafka.set_defaults(func=_cmd_kafka)
