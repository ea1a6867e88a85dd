"""`driftline policy` and the token rotation reaching the policy, embedded and on Kafka."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from schemas import topics
from schemas.policy import TenantPolicy
from tests.support.processes import cli as driftline
from tests.test_receiver_kafka import read_key


def test_versions_grow_and_rotations_are_recorded(tmp_path: Path) -> None:
    policy = tmp_path / "acme.yaml"
    policy.write_text('tenant: acme\ntools: {claude-code: {minimum_version: "2.0.10"}}\n')
    assert "version 1" in driftline(tmp_path, "policy", "set", str(policy)).stdout
    assert "version 2" in driftline(tmp_path, "policy", "set", str(policy)).stdout
    assert driftline(tmp_path, "tokens", "rotate", "--tenant", "acme").returncode == 0
    shown = json.loads(driftline(tmp_path, "policy", "show", "--tenant", "acme").stdout)
    assert shown["version"] == 3
    assert shown["token_rotated_at"] is not None
    assert shown["tools"]["claude-code"]["minimum_version"] == "2.0.10"
    # a later policy file without a rotation keeps the one already known
    driftline(tmp_path, "policy", "set", str(policy))
    shown = json.loads(driftline(tmp_path, "policy", "show", "--tenant", "acme").stdout)
    assert shown["version"] == 4 and shown["token_rotated_at"] is not None


def test_a_bad_policy_file_names_the_field(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("tenant: acme\nstale_token: {threshold: 0}\n")
    result = driftline(tmp_path, "policy", "set", str(policy))
    assert result.returncode == 2
    assert "stale_token.threshold" in result.stderr


def test_show_without_a_policy_prints_the_default(tmp_path: Path) -> None:
    assert driftline(tmp_path, "tokens", "create", "--tenant", "acme").returncode == 0
    result = driftline(tmp_path, "policy", "show", "--tenant", "nobody")
    assert json.loads(result.stdout)["required_attributes"] == ["team.id"]
    assert "default" in result.stderr


def test_show_in_a_directory_without_data_is_an_error(tmp_path: Path) -> None:
    result = driftline(tmp_path / "elsewhere", "policy", "show", "--tenant", "acme")
    assert result.returncode != 0 and "no Driftline data at" in result.stderr
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.kafka
async def test_policy_set_publishes_to_the_compacted_topic(tmp_path: Path, kafka: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"tenant": tenant, "required_attributes": ["team.id", "x"]}))
    result = driftline(
        tmp_path, "policy", "set", str(policy), "--bus", "kafka", "--bootstrap", kafka
    )
    assert result.returncode == 0, result.stderr
    [value] = await read_key(kafka, topics.POLICY, tenant)
    published = TenantPolicy.from_json(value)
    assert (published.version, published.required_attributes) == (1, ("team.id", "x"))
