"""Whether the local table files under GRADER_DATA_DIR belong to the broker's changelogs.

A worker's RocksDB tables hold values and the changelog offset they reached.
They are only valid against the changelog topic they were built from. If
that topic is gone (a tansu broker with memory storage restarted; topics
deleted) or was deleted and created again (by another worker after such a
restart, or by an operator), the offsets mean nothing: Faust's recovery
stops with a ConsistencyError when the stored offset is past the new end,
or silently keeps old values when the new topic has grown past it.

So next to each table's files the worker records the changelog's topic id
(a UUID the broker gives each topic it creates; a recreated topic gets a new
one), once the topic exists. At start-up, a table whose files exist but
whose recorded id is missing or differs from the broker's is dropped. The
changelog is the source of truth, so dropping local files is always safe:
it only costs a full restore.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from grader.kafka.admin import topic_ids
from grader.kafka.auth import KafkaTarget

log = logging.getLogger(__name__)
ID_SUFFIX = ".changelog-id"


def changelogs_of(app: Any) -> dict[str, str]:
    """Table name -> its changelog topic."""
    return {table.name: table.changelog_topic.get_topic_name() for table in app.tables.values()}


def check_local_tables(tabledir: Path, changelogs: dict[str, str],
                       kafka: str | KafkaTarget) -> None:
    """Drop the local files of each table not built from its changelog topic as it is now."""
    if not tabledir.is_dir():
        return
    ids = topic_ids(kafka, changelogs.values())
    for name, topic in sorted(changelogs.items()):
        files = sorted(tabledir.glob(f"{name}-*.db"))  # one RocksDB per partition
        if not files:
            continue
        id_file = tabledir / f"{name}{ID_SUFFIX}"
        recorded = id_file.read_text().strip() if id_file.is_file() else None
        current = ids.get(topic)
        if current is not None and recorded == current:
            continue
        why = ("does not exist" if current is None else
               "has no recorded id here" if recorded is None else
               f"was created again (id {current}, the local files are from {recorded})")
        log.warning("changelog topic %s %s: dropping the local tables of %s (%d files under "
                    "%s); they are restored from the changelog", topic, why, name, len(files),
                    tabledir)
        for path in [*files, id_file]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def record_changelog_ids(tabledir: Path, changelogs: dict[str, str],
                         kafka: str | KafkaTarget) -> bool:
    """Write each existing changelog's topic id next to its table; True once all exist."""
    ids = topic_ids(kafka, changelogs.values())
    tabledir.mkdir(parents=True, exist_ok=True)
    for name, topic in changelogs.items():
        if topic in ids:
            (tabledir / f"{name}{ID_SUFFIX}").write_text(ids[topic] + "\n")
    return all(topic in ids for topic in changelogs.values())


async def record_when_created(tabledir: Path, changelogs: dict[str, str],
                              kafka: str | KafkaTarget, every: float = 1.0,
                              attempts: int = 120) -> None:
    """Record the changelog ids as soon as Faust has created the topics (a start-up task)."""
    loop = asyncio.get_running_loop()
    for _ in range(attempts):
        try:
            if await loop.run_in_executor(None, record_changelog_ids, tabledir, changelogs,
                                          kafka):
                return
        except Exception as exc:  # the broker may be busy at start-up: try again
            log.info("recording the changelog topic ids failed, trying again: %r", exc)
        await asyncio.sleep(every)
    log.warning("changelog topics %s not found: their ids are not recorded, so the next "
                "start restores the tables from the changelog", sorted(changelogs.values()))
