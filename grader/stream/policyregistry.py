"""One meaning per policy version: the ``{prefix}policies`` topic (compacted).

Every worker, at start-up, reads which digest each ``name:version`` was
first used with, refuses to start when one of its policies has the same
version and another digest (its rules changed without a new version), and
records the versions it brings. So "version 3 of abc-100" means one thing
for every worker, ever (docs/policies.md, "Roll-out").
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from grader import kafkaauth
from grader.errors import GraderError
from grader.kafkaauth import KafkaTarget
from grader.policy import Policy
from grader.stream.admin import kafka_module

TOPIC = "policies"
READ_TIMEOUT = 10.0  # seconds to read the topic to its end


def check_and_record(kafka: KafkaTarget, prefix: str, policies: tuple[Policy, ...]) -> None:
    """Refuse a changed policy that kept its version; record the versions not seen yet."""
    known = read_known(kafka, prefix + TOPIC)
    for policy in policies:
        key = f"{policy.name}:{policy.version}"
        digest = known.get(key)
        if digest is not None and digest != policy.digest:
            raise GraderError(f"policy {policy.name} ({policy.source}): version "
                              f"{policy.version} was first used with other rules; give the "
                              "changed policy a new version")
    new = [p for p in policies if f"{p.name}:{p.version}" not in known]
    if new:
        producer = _client(kafka, "KafkaProducer", acks="all", linger_ms=0)
        try:
            for p in new:
                value = orjson.dumps({"name": p.name, "version": p.version,
                                      "digest": p.digest})
                producer.send(prefix + TOPIC, key=f"{p.name}:{p.version}".encode(),
                              value=value, partition=0)
                producer.flush()  # one record a batch: tansu's end offset stays right
        finally:
            producer.close()


def read_known(kafka: KafkaTarget, topic: str) -> dict[str, str]:
    """``name:version`` -> digest, from the topic's start to its end."""
    module = kafka_module()
    consumer = _client(kafka, "KafkaConsumer", enable_auto_commit=False)
    try:
        tp = module.TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        known: dict[str, str] = {}
        deadline = time.monotonic() + READ_TIMEOUT
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise GraderError(f"topic {topic}: not read to its end within "
                                  f"{READ_TIMEOUT:g} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key is not None and record.value is not None:
                        known[record.key.decode()] = orjson.loads(record.value)["digest"]
        return known
    finally:
        consumer.close()


def _client(kafka: KafkaTarget, kind: str, **kwargs: Any) -> Any:
    auth = kafkaauth.client_auth(kafka.security, kafkaauth.ssl_context(kafka.security))
    module = kafka_module()
    return getattr(module, kind)(bootstrap_servers=kafka.servers, **kwargs, **auth)
