"""One Kafka 4.0 broker for the test session, from wherever this machine can provide one.

Order: ``KAFKA_BOOTSTRAP_SERVERS`` (CI or a developer's own broker), then a testcontainers broker
when a Docker engine answers, then the local broker of ``bus.kafka_local``.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
from pathlib import Path

from bus import kafka_local

REPO = Path(__file__).resolve().parents[2]
LOCAL_PORT = 19092
LOCAL_DATA_DIR = REPO / ".cache" / "kafka-test"
# Confluent Platform 8.0 is Apache Kafka 4.0; testcontainers' KafkaContainer drives the
# Confluent image's scripts, so the apache/kafka image does not fit it.
CONTAINER_IMAGE = os.environ.get("KAFKA_TEST_IMAGE", "confluentinc/cp-kafka:8.0.0")


@functools.cache
def kafka_bootstrap() -> str:
    """Bootstrap servers of the session's broker, started on first call and cached.

    A testcontainer is stopped at interpreter exit. The local broker is deliberately left
    running: the next test run reuses it in well under a second instead of paying a JVM start
    (and up to ~6 s of KRaft restart). Stop it with
    ``driftline kafka down --kafka-data .cache/kafka-test``, as .ci/run does on exit; plain
    ``make kafka-down`` stops the development broker in ``.cache/kafka-data`` only.
    """
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        return configured
    if _docker_engine_answers():
        return _start_container()
    port = int(os.environ.get("KAFKA_PORT") or LOCAL_PORT)
    return kafka_local.up(port=port, data_dir=LOCAL_DATA_DIR)


def _docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"], capture_output=True, timeout=5, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def _start_container() -> str:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # older testcontainers 4.x keep it at the old path
        from testcontainers.kafka import KafkaContainer

    container = (
        KafkaContainer(CONTAINER_IMAGE)
        .with_kraft()
        .with_env("KAFKA_NUM_PARTITIONS", "4")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true")
        .with_env("KAFKA_MIN_INSYNC_REPLICAS", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )
    container.start(timeout=120)
    atexit.register(container.stop)
    return str(container.get_bootstrap_server())
