"""Metadata v10 to v12: the topics with their topic ids (aiokafka's MetadataRequest stops at
v5, which has none).

The topic id is a UUID the broker gives each topic it creates; a topic deleted
and created again gets a new one (grader.stream.localstate). Built on
aiokafka's protocol classes (``Request``, ``RequestStruct``, the compact
types of the flexible versions), so an aiokafka client negotiates the
version with each broker like any of its own requests; sent by
:func:`grader.kafka.admin.described_topics`. Field names are the Kafka
protocol's (MetadataResponse.json, snake_case).
"""

from __future__ import annotations

import uuid
from io import BytesIO
from typing import Any

from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

__all__ = ["TopicsMetadataRequest"]


class Uuid(AbstractType[str]):  # type: ignore[misc]  # aiokafka is untyped
    """Kafka's UUID: 16 bytes; decoded as the canonical text form (``str(uuid.UUID)``)."""

    @classmethod
    def encode(cls, value: str) -> bytes:
        return uuid.UUID(value).bytes if value else bytes(16)  # all zeros: no id

    @classmethod
    def decode(cls, data: BytesIO) -> str:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding UUID")
        return str(uuid.UUID(bytes=raw))

    @classmethod
    def repr(cls, value: str) -> str:
        return value


_BROKERS = ("brokers", CompactArray(
    ("node_id", Int32), ("host", CompactString("utf-8")), ("port", Int32),
    ("rack", CompactString("utf-8")), ("tags", TaggedFields)))
_PARTITIONS = ("partitions", CompactArray(
    ("error_code", Int16), ("partition_index", Int32), ("leader_id", Int32),
    ("leader_epoch", Int32), ("replica_nodes", CompactArray(Int32)),
    ("isr_nodes", CompactArray(Int32)), ("offline_replicas", CompactArray(Int32)),
    ("tags", TaggedFields)))
_TOPICS = ("topics", CompactArray(
    ("error_code", Int16), ("name", CompactString("utf-8")), ("topic_id", Uuid),
    ("is_internal", Boolean), _PARTITIONS, ("topic_authorized_operations", Int32),
    ("tags", TaggedFields)))
_REQUESTED = ("topics", CompactArray(
    ("topic_id", Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)))


class MetadataResponse_v10(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(("throttle_time_ms", Int32), _BROKERS,
                    ("cluster_id", CompactString("utf-8")), ("controller_id", Int32), _TOPICS,
                    ("cluster_authorized_operations", Int32), ("tags", TaggedFields))


class MetadataResponse_v11(Response):  # type: ignore[misc]
    """v11 drops the cluster's authorized operations; v12 lets a topic's name be null."""

    API_KEY = 3
    API_VERSION = 11
    SCHEMA = Schema(("throttle_time_ms", Int32), _BROKERS,
                    ("cluster_id", CompactString("utf-8")), ("controller_id", Int32), _TOPICS,
                    ("tags", TaggedFields))


class MetadataResponse_v12(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = MetadataResponse_v11.SCHEMA


class MetadataRequest_v10(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(_REQUESTED, ("allow_auto_topic_creation", Boolean),
                    ("include_cluster_authorized_operations", Boolean),
                    ("include_topic_authorized_operations", Boolean), ("tags", TaggedFields))


class MetadataRequest_v11(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 11
    RESPONSE_TYPE = MetadataResponse_v11
    SCHEMA = Schema(_REQUESTED, ("allow_auto_topic_creation", Boolean),
                    ("include_topic_authorized_operations", Boolean), ("tags", TaggedFields))


class MetadataRequest_v12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 12
    RESPONSE_TYPE = MetadataResponse_v12
    SCHEMA = MetadataRequest_v11.SCHEMA


_VERSIONS = MetadataRequest_v10 | MetadataRequest_v11 | MetadataRequest_v12


class TopicsMetadataRequest(Request[_VERSIONS]):  # type: ignore[misc]
    """Metadata of every topic (no auto-creation), with the topic ids."""

    API_KEY = 3

    def build(self, request_struct_class: type[Any]) -> Any:
        if request_struct_class.API_VERSION == 10:
            return request_struct_class(None, False, False, False, {})
        return request_struct_class(None, False, False, {})
