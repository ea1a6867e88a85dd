"""A processors worker as its own OS process, so tests can kill -9 it.

``python -m tests.support.faust_worker --bootstrap HOST:PORT --app-id ID --prefix P --data DIR``
runs ``driftline.processors_runner.run_worker`` with timeouts short enough for tests.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from driftline.processors_runner import run_worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--stats-interval", type=float, default=5.0)
    parser.add_argument("--recovery-stall", type=float, default=120.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    run_worker(
        args.bootstrap,
        args.data,
        app_id=args.app_id,
        partitions=args.partitions,
        topic_prefix=args.prefix,
        commit_interval=0.5,
        session_timeout=6.0,  # the broker's group.min.session.timeout.ms
        heartbeat_interval=0.5,
        rebalance_timeout=10.0,
        stats_interval=args.stats_interval,
        recovery_stall=args.recovery_stall,
    )


if __name__ == "__main__":
    main()
