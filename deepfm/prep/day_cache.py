"""What the preprocessing job learns from one day's input alone, kept between daily runs.

The job's window slides by a day per run: of the eight days it reads, seven were read the day
before. A day's line counts, its quarantined lines and the value counts of its valid rows depend
on nothing but that day's files, so they are kept here and a run validates and counts only the
days it has not seen. (The vocabulary itself, the sum of the training days' counts, changes
every day, and so every day is still encoded each run.)

An entry is keyed by the day and a fingerprint of its files (path, length, modification time)
and of the rules that produced it (the validity regex, the reason codes, the parse schema, this
format; a change to how reasons or values are worked out must bump ``FORMAT``): a rewritten
file, a changed rule or a new format gives a new entry. The root may be any URI (an object store
too). Layout::

    <root>/day=YYYY-MM-DD/<fingerprint>/validation/<writer>/validation.json   rows_read, quarantined_by_reason
                                                            quarantine/       the day's malformed lines
                                        values-<fields id>/<writer>/          value counts of the day's valid
                                                                              rows (field, value, count)

Each part is published whole by ``fs.publish_once``: written in a folder of its writer's, then
named by a ``_committed.json`` beside it (an object store has no rename), so a failed run leaves
no entry; runs for different dates share days, and the first of two runs storing the same part
(identical content: same fingerprint) keeps its copy, the other drops its own. Storing a day's
validation removes that day's entries of other fingerprints.
Deleting any of it is always safe: what is missing is computed again. Nothing prunes the days
no run will read again (one entry per day: its quarantine and its distinct values' counts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import SparkSession

from deepfm.core import fs
from deepfm.prep import rawlogs

# 2: quarantined lines keep their raw bytes (raw_bytes) beside a readable raw_line; 3: and the field at
# fault; 4: each part in its writer's folder, named by a commit marker
FORMAT = 4
VALIDATION_FILENAME = "validation.json"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class DayCache:
    """The entries of one run's days, under ``root`` (a path or URI)."""

    def __init__(self, root: str, entries: Mapping[dt.date, str]) -> None:
        self.root = root
        self._entries = dict(entries)
        self.reused: dict[str, list[str]] = {"validation": [], "value_counts": []}  # days, for the summary

    @classmethod
    def open(
        cls, spark: SparkSession, root: str, files: Mapping[dt.date, Sequence[str]], rules: Mapping[str, Any]
    ) -> DayCache:
        """The cache at ``root`` for the days of ``files`` (``preprocess.discover``), read by
        ``rules`` (``LogFormat.rules``: what decides a record's validity and parse)."""
        rules = {"format": FORMAT, **rules}
        entries = {}
        for day, paths in files.items():
            fingerprint = _digest({**rules, "files": rawlogs.file_identities(spark, paths)})
            entries[day] = fs.join(root, f"day={day.isoformat()}", fingerprint)
        return cls(root, entries)

    def validation(self, day: dt.date, quarantine_dir: str) -> tuple[int, dict[str, int]] | None:
        """``day``'s (lines read, lines quarantined per reason) when kept, its quarantined lines
        then copied to ``quarantine_dir``; None when not kept."""
        kept = fs.committed(fs.join(self._entries[day], "validation"))
        if kept is None:
            return None
        counts = fs.read_json(fs.join(kept, VALIDATION_FILENAME))
        fs.copy_tree(fs.join(kept, "quarantine"), quarantine_dir)
        self.reused["validation"].append(day.isoformat())
        return counts["rows_read"], counts["quarantined_by_reason"]

    def store_validation(
        self, day: dt.date, rows_read: int, quarantined_by_reason: Mapping[str, int], quarantine_dir: str
    ) -> None:
        """Keep ``day``'s validation: its counts and a copy of its quarantined lines."""
        entry = self._entries[day]
        counts = {"day": day.isoformat(), "rows_read": rows_read, "quarantined_by_reason": dict(quarantined_by_reason)}

        def write(folder: str) -> None:
            fs.copy_tree(quarantine_dir, fs.join(folder, "quarantine"))
            fs.put_json(fs.join(folder, VALIDATION_FILENAME), counts)

        fs.publish_once(fs.join(entry, "validation"), write)  # a concurrent run's identical part wins
        for stale in fs.listdir(fs.parent(entry)):  # entries of the day's earlier files
            if stale != fs.name(entry):
                fs.remove_tree(fs.join(fs.parent(entry), stale))

    def has_values(self, day: dt.date, fields: Sequence[str]) -> bool:
        """Whether ``day``'s value counts of ``fields`` are kept (recorded as reused when so)."""
        if fs.committed(self._values(day, fields)) is None:
            return False
        self.reused["value_counts"].append(day.isoformat())
        return True

    def values_path(self, day: dt.date, fields: Sequence[str]) -> str:
        """Where ``day``'s value counts of ``fields`` are kept (a Parquet folder; once stored)."""
        kept = fs.committed(self._values(day, fields))
        if kept is None:
            raise KeyError(f"no value counts of {day} kept in {self.root}")
        return kept

    def _values(self, day: dt.date, fields: Sequence[str]) -> str:
        return fs.join(self._entries[day], f"values-{_digest(list(fields))}")

    def store_values(self, day: dt.date, fields: Sequence[str], counted: str) -> None:
        """Keep a copy of ``counted`` (a Parquet folder of ``day``'s value counts of ``fields``,
        complete) in the day's entry, unless a concurrent run did."""
        fs.publish_once(self._values(day, fields), lambda folder: fs.copy_tree(counted, folder))

    def scratch_dir(self) -> str:
        """A new folder path under the root (hidden from readers) for Spark to write into before
        ``store_values``; the caller removes it."""
        return fs.scratch_dir(self.root)
