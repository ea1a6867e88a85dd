"""The local broker of bus.kafka_local: a real Kafka 4.0 JVM, on a port and data dir of
these tests' own so a developer's broker on 9092 or the suite's on 19092 is left alone."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bus import kafka_local


def _jars_obtainable() -> bool:
    cached = kafka_local.cache_root() / f"kafka-{kafka_local.DEFAULT_VERSION}/libs.complete"
    return cached.is_file() or shutil.which("mvn") is not None


pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("java") is None or not _jars_obtainable(),
        reason="needs java, and mvn unless the Kafka jars are cached",
    ),
]


@dataclass(frozen=True)
class Broker:
    port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> str:
        return kafka_local.up(port=self.port, data_dir=self.data_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(free_port(), tmp_path_factory.mktemp("kafka-local"))
    broker.up()
    yield broker
    kafka_local.down(broker.data_dir)


async def produce(bootstrap: str, topic: str, count: int) -> set[int]:
    """Send keyed records with the producer settings the pipeline uses; return partitions hit."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        partitions = set()
        for i in range(count):
            meta = await producer.send_and_wait(topic, f"value-{i}".encode(), key=f"k-{i}".encode())
            partitions.add(meta.partition)
        return partitions
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            values += [record.value for records in batches.values() for record in records]
        return values
    finally:
        await consumer.stop()


def test_up_returns_bootstrap_and_is_idempotent(broker: Broker) -> None:
    first = kafka_local.status(broker.data_dir)
    assert first.running and first.answering
    assert first.bootstrap == broker.bootstrap

    started = time.monotonic()
    assert broker.up() == broker.bootstrap
    assert time.monotonic() - started < 5
    assert kafka_local.status(broker.data_dir).pid == first.pid


def test_cli_up_reuses_the_running_broker(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["up", "--port", str(broker.port), "--data", str(broker.data_dir)]
    assert kafka_local.main(argv) == 0
    assert capsys.readouterr().out.strip() == broker.bootstrap
    assert kafka_local.main(["status", "--data", str(broker.data_dir)]) == 0


def test_up_refuses_a_second_port_for_the_same_data_dir(broker: Broker) -> None:
    with pytest.raises(kafka_local.KafkaLocalError, match="already runs on port"):
        kafka_local.up(port=free_port(), data_dir=broker.data_dir)


async def test_round_trip_over_four_partitions(broker: Broker) -> None:
    topic = f"test.roundtrip.{uuid.uuid4().hex}"
    partitions = await produce(broker.bootstrap, topic, 40)
    assert partitions == {0, 1, 2, 3}  # auto-created with num.partitions=4

    values = await consume(broker.bootstrap, topic, 40)
    assert sorted(values) == sorted(f"value-{i}".encode() for i in range(40))


async def test_down_then_up_keeps_the_data(broker: Broker) -> None:
    topic = f"test.restart.{uuid.uuid4().hex}"
    await produce(broker.bootstrap, topic, 12)
    old_pid = kafka_local.status(broker.data_dir).pid

    kafka_local.down(broker.data_dir)
    stopped = kafka_local.status(broker.data_dir)
    assert not stopped.running
    assert not (broker.data_dir / kafka_local.PID_FILE).exists()
    kafka_local.down(broker.data_dir)  # stopping a stopped broker is fine

    assert broker.up() == broker.bootstrap
    assert kafka_local.status(broker.data_dir).pid != old_pid
    values = await consume(broker.bootstrap, topic, 12)
    assert sorted(values) == sorted(f"value-{i}".encode() for i in range(12))


def test_up_refuses_a_port_taken_by_someone_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(kafka_local.KafkaLocalError, match="already in use"):
            kafka_local.up(port=port, data_dir=tmp_path / "kafka")


def test_stopped_broker_reports_stopped(tmp_path: Path) -> None:
    kafka_local.down(tmp_path)
    assert not kafka_local.status(tmp_path).running
    assert kafka_local.main(["status", "--data", str(tmp_path)]) == 1


def test_port_comes_from_kafka_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PORT", "29999")
    assert kafka_local._resolve_port(None) == 29999
    assert kafka_local._resolve_port(1234) == 1234
    monkeypatch.delenv("KAFKA_PORT")
    assert kafka_local._resolve_port(None) == kafka_local.DEFAULT_PORT
