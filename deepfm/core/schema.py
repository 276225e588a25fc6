"""A declared click-log schema: what a team's raw logs look like, so any log can be validated and parsed.

One ``LogSchema`` per kind of log (``deepfm/conf/schemas/<name>.yaml``: Criteo, Avazu, an app-store
log). It says how records are stored (``format``: delimited ``text`` with or without a header line,
``json`` lines, or ``parquet``), which column is the label and which of its values mean a click,
each column's kind, and where a row's day comes from: the folder it was written to, or an
event-time column (with optional derived ``hour`` and ``weekday`` fields).

Column kinds:
  ``label``        the click label (exactly one column),
  ``integer``      digits with an optional minus sign, at most 18 (fits a long),
  ``float``        a decimal number, optional exponent,
  ``categorical``  any text, or text matching ``pattern``, at most ``max_length`` characters (0: any),
  ``multi``        a list of categorical items (``item_delimiter`` in text; an array in JSON and
                   Parquet); the first ``max_items`` are kept,
  ``timestamp``    a time in ``time_format`` (a Spark datetime pattern, or ``unix`` seconds),
  ``ignore``       read and validated as text, never a feature (e.g. a log's own row id).
Any value but the label's may be empty (missing). The features are the integer, float, categorical
and multi columns, then the derived fields. The Spark side (validation, parsing) is
:mod:`deepfm.prep.rawlogs`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("text", "json", "parquet")
KINDS = ("label", "integer", "float", "categorical", "multi", "timestamp", "ignore")
FEATURE_KINDS = ("integer", "float", "categorical", "multi")
DERIVED = ("hour", "weekday")  # fields derived from the event time: hour of day 0-23, weekday 1 (Sunday)-7


class SchemaError(ValueError):
    """A schema file that cannot describe a log (unknown kind, no label, a bad setting)."""


@dataclass(frozen=True)
class Column:
    """One column of the log; the settings that do not apply to its kind stay at their defaults."""

    name: str
    kind: str
    pattern: str = ""  # categorical: a Java regex each value must match in full
    max_length: int = 0  # categorical, multi items: longest value accepted (0: any)
    item_delimiter: str = ""  # multi, text format: the separator between items
    max_items: int = 0  # multi: items kept per row, the first ones
    time_format: str = ""  # timestamp: Spark datetime pattern, or "unix" (seconds since the epoch)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(f"column {self.name}: unknown kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "multi" and self.max_items < 1:
            raise SchemaError(f"column {self.name}: a multi column needs max_items >= 1")
        if self.kind == "timestamp" and not self.time_format:
            raise SchemaError(f"column {self.name}: a timestamp column needs a time_format")
        if self.pattern and self.max_length:  # a pattern bounds the length itself
            raise SchemaError(f"column {self.name}: give a pattern or a max_length, not both")
        if "__" in self.name:  # encoded slot columns are <name>__<i>
            raise SchemaError(f"column {self.name}: names may not contain '__'")


@dataclass(frozen=True)
class LogSchema:
    """A kind of click log. ``columns`` in storage order (text: the fields of a line).

    ``event_time``: the timestamp column whose date (in its own time zone: the wall-clock date of the
    logged time, or of ``unix`` seconds in ``time_zone``) is a row's day; empty: the folder's day.
    ``derived``: fields computed from the event time, named ``<event_time>_<hour|weekday>``.
    """

    name: str
    columns: tuple[Column, ...]
    format: str = "text"
    delimiter: str = "\t"
    header: bool = False
    positive: tuple[str, ...] = ("1",)
    negative: tuple[str, ...] = ("0",)
    event_time: str = ""
    time_zone: str = "UTC"
    derived: tuple[str, ...] = ()
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise SchemaError(f"schema {self.name}: unknown format {self.format!r}; choose one of {FORMATS}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise SchemaError(f"schema {self.name}: duplicate column names")
        if [c.kind for c in self.columns].count("label") != 1:
            raise SchemaError(f"schema {self.name}: exactly one column must be the label")
        if self.format == "text" and len(self.delimiter) != 1:
            raise SchemaError(f"schema {self.name}: the delimiter must be one character")
        if set(self.positive) & set(self.negative) or not self.positive or not self.negative:
            raise SchemaError(f"schema {self.name}: positive and negative label values must be disjoint, non-empty")
        if self.event_time and self.column(self.event_time).kind != "timestamp":
            raise SchemaError(f"schema {self.name}: event_time {self.event_time!r} is not a timestamp column")
        if self.derived and not self.event_time:
            raise SchemaError(f"schema {self.name}: derived fields need an event_time column")
        if unknown := set(self.derived) - set(DERIVED):
            raise SchemaError(f"schema {self.name}: unknown derived fields {sorted(unknown)}; choose from {DERIVED}")
        clash = set(self.derived_fields) & set(names)
        if clash:
            raise SchemaError(f"schema {self.name}: derived fields {sorted(clash)} clash with columns")

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"schema {self.name} has no column {name!r}")

    @property
    def label(self) -> str:
        return next(c.name for c in self.columns if c.kind == "label")

    @property
    def derived_fields(self) -> tuple[str, ...]:
        return tuple(f"{self.event_time}_{d}" for d in self.derived)

    @property
    def feature_kinds(self) -> dict[str, str]:
        """Every feature field and its kind, in order: the feature columns, then the derived fields
        (categorical: an hour or a weekday is a category, not a magnitude)."""
        kinds = {c.name: c.kind for c in self.columns if c.kind in FEATURE_KINDS}
        return {**kinds, **dict.fromkeys(self.derived_fields, "categorical")}

    @property
    def fingerprint(self) -> str:
        """Content hash of everything that changes how logs are read; 16 hex digits."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout, without ``description`` and with defaulted column settings left out."""
        defaults = Column("_", "ignore")
        columns = [
            {"name": c.name, "kind": c.kind}
            | {k: v for k, v in vars(c).items() if k not in ("name", "kind") and v != getattr(defaults, k)}
            for c in self.columns
        ]
        return {
            "name": self.name,
            "format": self.format,
            "delimiter": self.delimiter,
            "header": self.header,
            "positive": list(self.positive),
            "negative": list(self.negative),
            "event_time": self.event_time,
            "time_zone": self.time_zone,
            "derived": list(self.derived),
            "columns": columns,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogSchema:
        """From a schema file's contents (``columns`` may use ``repeat: N`` with ``{i}`` in the name,
        counting from ``first`` (1), for runs of like columns such as Criteo's ``I1..I13``)."""
        try:
            columns = []
            for entry in d["columns"]:
                settings = {k: v for k, v in entry.items() if k not in ("repeat", "first")}
                if "repeat" not in entry:
                    columns.append(Column(**settings))
                    continue
                first = int(entry.get("first", 1))
                for i in range(first, first + int(entry["repeat"])):
                    columns.append(Column(**{**settings, "name": str(settings["name"]).format(i=i)}))
            return cls(
                name=str(d["name"]),
                columns=tuple(columns),
                format=str(d.get("format", "text")),
                delimiter=str(d.get("delimiter", "\t")),
                header=bool(d.get("header", False)),
                positive=tuple(str(v) for v in d.get("positive", ("1",))),
                negative=tuple(str(v) for v in d.get("negative", ("0",))),
                event_time=str(d.get("event_time") or ""),
                time_zone=str(d.get("time_zone", "UTC")),
                derived=tuple(d.get("derived") or ()),
                description=str(d.get("description", "")),
            )
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"malformed log schema: {exc!r}") from exc
