"""What the preprocessing job learns from one day's input alone, kept between daily runs.

The job's window slides by a day per run: of the eight days it reads, seven were read the day
before. A day's line counts, its quarantined lines and the value counts of its valid rows depend
on nothing but that day's files, so they are kept here and a run validates and counts only the
days it has not seen. (The vocabulary itself, the sum of the training days' counts, changes
every day, and so every day is still encoded each run.)

An entry is keyed by the day and a fingerprint of its files (path, length, modification time)
and of the rules that produced it (the validity regex, the reason codes, the parse schema, this
format; a change to how reasons or values are worked out must bump ``FORMAT``): a rewritten
file, a changed rule or a new format gives a new entry. Layout::

    <root>/day=YYYY-MM-DD/<fingerprint>/validation.json      rows_read, quarantined_by_reason
                                        quarantine/           the day's malformed lines (rawlogs.quarantined)
                                        values-<fields id>/   value counts of the day's valid rows
                                                              (field, value, count) for one set of fields

Each part is written under a temporary name and renamed into place whole, so a failed run leaves
no partial entry; runs for different dates share days, and the first of two runs storing the same
entry (identical content: same fingerprint) keeps its copy, the other drops its own. Storing a
day's entry removes that day's entries of other fingerprints.
Deleting any of it is always safe: what is missing is computed again. Nothing prunes the days
no run will read again (one entry per day: its quarantine and its distinct values' counts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from deepfm.core import fs
from deepfm.prep import rawlogs

# 2: quarantined lines keep their raw bytes (raw_bytes) beside a readable raw_line; 3: and the field at fault
FORMAT = 3
VALIDATION_FILENAME = "validation.json"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class DayCache:
    """The entries of one run's days, under ``root`` (a driver-local path)."""

    def __init__(self, root: Path, entries: Mapping[dt.date, Path]) -> None:
        self.root = root
        self._entries = dict(entries)
        self.reused: dict[str, list[str]] = {"validation": [], "value_counts": []}  # days, for the summary

    @classmethod
    def open(
        cls, spark: SparkSession, root: str | Path, files: Mapping[dt.date, Sequence[str]], rules: Mapping[str, Any]
    ) -> DayCache:
        """The cache at ``root`` for the days of ``files`` (``preprocess.discover``), read by
        ``rules`` (``LogFormat.rules``: what decides a record's validity and parse)."""
        rules = {"format": FORMAT, **rules}
        entries = {
            day: Path(root)
            / f"day={day.isoformat()}"
            / _digest({**rules, "files": rawlogs.file_identities(spark, paths)})
            for day, paths in files.items()
        }
        return cls(Path(root), entries)

    def validation(self, day: dt.date, quarantine_dir: Path) -> tuple[int, dict[str, int]] | None:
        """``day``'s (lines read, lines quarantined per reason) when kept, its quarantined lines
        then copied to ``quarantine_dir``; None when not kept."""
        entry = self._entries[day]
        if not (entry / VALIDATION_FILENAME).exists():
            return None
        kept = json.loads((entry / VALIDATION_FILENAME).read_text())
        shutil.copytree(entry / "quarantine", quarantine_dir)
        self.reused["validation"].append(day.isoformat())
        return kept["rows_read"], kept["quarantined_by_reason"]

    def store_validation(
        self, day: dt.date, rows_read: int, quarantined_by_reason: Mapping[str, int], quarantine_dir: Path
    ) -> None:
        """Keep ``day``'s validation: its counts and a copy of its quarantined lines."""
        entry = self._entries[day]
        with fs.staged_dir(entry, keep_existing=True) as staged:  # a concurrent run's identical entry wins
            shutil.copytree(quarantine_dir, staged / "quarantine")
            counts = {
                "day": day.isoformat(),
                "rows_read": rows_read,
                "quarantined_by_reason": dict(quarantined_by_reason),
            }
            (staged / VALIDATION_FILENAME).write_text(json.dumps(counts, indent=2))
        for stale in entry.parent.iterdir():  # entries of the day's earlier files (not others' temporaries)
            if stale != entry and not stale.name.startswith("."):
                shutil.rmtree(stale, ignore_errors=True)

    def has_values(self, day: dt.date, fields: Sequence[str]) -> bool:
        """Whether ``day``'s value counts of ``fields`` are kept (recorded as reused when so)."""
        if not self.values_path(day, fields).exists():
            return False
        self.reused["value_counts"].append(day.isoformat())
        return True

    def values_path(self, day: dt.date, fields: Sequence[str]) -> Path:
        """Where ``day``'s value counts of ``fields`` are kept (a Parquet folder)."""
        return self._entries[day] / f"values-{_digest(list(fields))}"

    def store_values(self, day: dt.date, fields: Sequence[str], counted: Path) -> None:
        """Keep ``counted`` (a Parquet folder of ``day``'s value counts of ``fields``, complete),
        moving it into the day's entry (unless a concurrent run did); the day's validation must be
        kept already."""
        fs.publish_dir(counted, self.values_path(day, fields))

    def scratch_dir(self) -> Path:
        """A new folder path under the root (hidden from readers) for Spark to write into before
        ``store_values``; the caller removes it."""
        return fs.scratch_dir(self.root)
