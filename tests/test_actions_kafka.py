"""`driftline actions serve` on the real broker: a raised flag on driftline.flags wakes a live
remediation pass (the interval alone would not come round during the test), and every audit
step is published on driftline.actions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import store
from actions.integrations import IntegrationStore
from actions.mdm import Integration
from processors.topology import TopicNames, ensure_topics
from schemas import topics
from schemas.remediation import AuditRecord, Vendor
from tests.emulators.iru import IruEmulator
from tests.support.drift import outdated_laptop

pytestmark = pytest.mark.kafka

NOW = datetime.now(UTC).replace(microsecond=0)


async def test_a_raised_flag_wakes_a_live_pass_and_the_audit_is_published(
    tmp_path: Path, kafka: str
) -> None:
    await ensure_topics(kafka, TopicNames.with_prefix(""), partitions=12)
    emulator = IruEmulator()
    await emulator.start()
    device = emulator.add_device("C02KAFKA")["device_id"]
    integrations = IntegrationStore(tmp_path / "mdm" / "integrations.json")
    integrations.configure(
        Integration(tenant_id="acme", vendor=Vendor.IRU, base_url=emulator.url, force_sync=True)
    )
    integrations.set_credential(
        "acme", Vendor.IRU, emulator.mint_token(emulator.all_privileges), datetime.now(UTC)
    )
    # what the sink would have stored: the endpoint and its flag
    dsn = f"chdb://{tmp_path}/clickhouse"
    client = store.connect(dsn)
    store.migrate(client)
    async with store.BatchWriter(client) as writer:
        await writer.add_durably(list(outdated_laptop("C02KAFKA", NOW)))
    client.close()

    audit = AIOKafkaConsumer(
        topics.ACTIONS, bootstrap_servers=kafka, group_id=f"t-{uuid.uuid4()}",
        auto_offset_reset="latest",
    )  # fmt: skip
    await audit.start()
    await audit.getmany(timeout_ms=500)  # joined and positioned at the end
    kill_switch = tmp_path / "actions.disabled"
    kill_switch.write_text("held until the test rings the doorbell")
    env = {**os.environ, "DRIFTLINE_ACTIONS_LIVE": "1", "DRIFTLINE_ACTIONS_INTERVAL": "600"}
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "actions", "serve", "--bootstrap", kafka,
         "--data", str(tmp_path), "--clickhouse", dsn, "--group", f"a-{uuid.uuid4()}",
         "--settle", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    try:
        # the start-up pass runs under the kill switch: skipped, audited, nothing sent
        states = await _audit_states(audit, until={"skipped"})
        assert "skipped" in states and emulator.blank_pushes == []
        kill_switch.unlink()
        time.sleep(1.0)  # the consumer has joined its group by now; ring the doorbell
        _, flag = outdated_laptop("C02KAFKA", NOW)
        await producer.send_and_wait(topics.FLAGS, flag.to_json(), key=b"acme/C02KAFKA")
        states = await _audit_states(audit, until={"succeeded"})
        assert {"planned", "sent", "succeeded"} <= states
        assert emulator.blank_pushes == [device]
    finally:
        await producer.stop()
        await audit.stop()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        await emulator.stop()
    assert "Traceback" not in output, output


async def _audit_states(consumer: AIOKafkaConsumer, until: set[str]) -> set[str]:
    states: set[str] = set()
    deadline = time.monotonic() + 30
    while not until <= states and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for messages in batches.values():
            for message in messages:
                states.add(AuditRecord.from_json(message.value).state.value)
        await asyncio.sleep(0)
    return states
