"""grader/devtools/kafkabroker.py without Java: the cluster ids it gives StorageTool."""

from __future__ import annotations

import base64
import uuid

import pytest

from grader.devtools import kafkabroker


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    dash = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # URL-safe base64 "-A..."
    plain = uuid.UUID(bytes=bytes([0x10]) + bytes(15))
    assert base64.urlsafe_b64encode(dash.bytes).decode().startswith("-")
    drawn = iter([dash, dash, plain])
    monkeypatch.setattr(kafkabroker.uuid, "uuid4", lambda: next(drawn))
    cluster_id = kafkabroker.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).rstrip(b"=").decode()
    assert len(cluster_id) == 22


def test_cluster_ids_are_kafka_uuids() -> None:
    for _ in range(2000):
        cluster_id = kafkabroker.new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
