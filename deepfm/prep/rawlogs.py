"""Raw click logs: finding a day's files, reading them, and validating and parsing their records
as a declared :class:`~deepfm.core.schema.LogSchema` says (:class:`LogFormat`).

Two layouts of daily files:
  - ``date``: ``<root>/date=YYYY-MM-DD/<any files>`` (plain or ``.gz``),
  - ``criteo``: Criteo Terabyte's ``<root>/day_<N>[.gz]``, ``day_0`` being ``day0_date``.
A record is a line of a ``text`` or ``json`` file, or a row of a ``parquet`` one (read as the
JSON text of the row, so that every format is quarantined, anti-joined and parsed the same way).

``LogFormat.rejected`` gives the invalid records with their quarantine reason code and the field at
fault (``with_reason``: every record, the valid ones with nulls) and ``LogFormat.parse_valid`` types
the valid ones. A text line is valid when it matches one regular expression built from the schema
(:attr:`LogFormat.valid_line`; timestamps are also parsed), so validation is one regex evaluation
per row; the reason is worked out only for the rare rows that fail it, by a few higher-order
functions whatever the number of columns (``_first_problem``). JSON and Parquet records are checked
field by field.

Impression id: ``xxhash64(day, file name, raw record)``, ``day`` the folder's. It is stable across
reruns and however Spark splits the files, and costs nothing when unused. Byte-identical records in
the same file share an id; they are indistinguishable impressions and get identical encodings and
predictions.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import reduce
from itertools import groupby
from operator import and_
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from deepfm.core.schema import Column as LogColumn
from deepfm.core.schema import LogSchema

LAYOUTS = ("date", "criteo")
# Quarantine reason codes, in the order a record is checked (it gets the first that applies): the
# record as a whole, its label, then its columns in order, each with the code of its kind.
RECORD_REASONS = {"text": "wrong_field_count", "json": "malformed_record", "parquet": "malformed_record"}
# Columns the jobs add next to a log's own: a schema may not use these names.
RESERVED = ("impression_id", "day", "split", "reason", "field", "raw_line", "raw_bytes", "source_file")

# At most 18 digits so every valid value fits a long; more is reported as bad_numeric. Groups are
# non-capturing and quantifiers possessive (a field cannot match its delimiter, so nothing is lost
# by not backtracking): the line regex is evaluated on every line and that makes it much cheaper.
# For the same reason the character classes list single characters, not ranges: java.util.regex
# tests a class of single characters with one bit-set lookup per input character, ranges with a
# chain of predicates (figures: benchmarks/README.md).
_DIGITS = "[0123456789]"
INTEGER_VALUE = f"(?:-?{_DIGITS}{{1,18}}+)?+"
FLOAT_VALUE = f"(?:[-+]?+(?:{_DIGITS}++(?:\\.{_DIGITS}*+)?+|\\.{_DIGITS}++)(?:[eE][-+]?+{_DIGITS}++)?+)?+"
_REGEX_SPECIAL = set("\\^$.|?*+()[]{}")
_CRITEO_FILE = re.compile(r"day_(\d+)(\.gz)?")


class InputDayError(RuntimeError):
    """A day's input is missing, empty or unreadable (the job may be configured to skip it)."""

    def __init__(self, day: dt.date, problem: str) -> None:
        super().__init__(f"input day {day.isoformat()}: {problem}")
        self.day = day
        self.problem = problem


def _hadoop_path(spark: SparkSession, path: str):
    """A Hadoop ``Path`` and its ``FileSystem``: works for local, HDFS and object-store roots."""
    jvm: Any = spark._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath, jpath.getFileSystem(spark._jsc.hadoopConfiguration())


def _list(spark: SparkSession, directory: str) -> list:
    """Visible entries (not ``_``/``.``-prefixed, as Spark's readers skip) of a directory."""
    jpath, fs = _hadoop_path(spark, directory)
    if not fs.isDirectory(jpath):
        return []
    return [s for s in fs.listStatus(jpath) if not s.getPath().getName().startswith(("_", "."))]


def detect_layout(spark: SparkSession, input_root: str) -> str:
    """``date`` if the root holds ``date=*`` folders, ``criteo`` if it holds ``day_N`` files."""
    names = [s.getPath().getName() for s in _list(spark, input_root)]
    found = {
        layout
        for layout, present in (
            ("date", any(n.startswith("date=") for n in names)),
            ("criteo", any(_CRITEO_FILE.fullmatch(n) for n in names)),
        )
        if present
    }
    if len(found) != 1:
        raise ValueError(
            f"cannot detect the input layout of {input_root}: expected either date=YYYY-MM-DD/ "
            f"folders or day_N[.gz] files, found {'both' if found else 'neither'}"
        )
    return found.pop()


def day_paths(
    spark: SparkSession,
    input_root: str,
    day: dt.date,
    layout: str = "auto",
    day0_date: dt.date | None = None,
) -> list[str]:
    """The files holding ``day``'s lines; raises :class:`InputDayError` if missing or empty."""
    if layout == "auto":
        layout = detect_layout(spark, input_root)
    root = input_root.rstrip("/")
    if layout == "date":
        where = f"{root}/date={day.isoformat()}/"
        files = [s for s in _list(spark, where) if s.isFile()]
    elif layout == "criteo":
        if day0_date is None or day < day0_date:
            raise InputDayError(day, f"criteo layout needs day0_date on or before the day (got {day0_date})")
        where = f"{root}/day_{(day - day0_date).days}[.gz]"
        candidates = [f"{root}/day_{(day - day0_date).days}{ext}" for ext in ("", ".gz")]
        files = [s for p in candidates for s in _list_file(spark, p)]
        if len(files) > 1:
            raise InputDayError(day, f"both plain and gzipped files exist: {candidates}")
    else:
        raise ValueError(f"unknown layout {layout!r}; expected auto or one of {LAYOUTS}")
    if not files:
        raise InputDayError(day, f"no input files at {where}")
    if sum(s.getLen() for s in files) == 0:
        raise InputDayError(day, f"input files at {where} are empty")
    return [s.getPath().toString() for s in files]


def file_identities(spark: SparkSession, paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(path, length, modification time in ms) of each file: what tells a rewritten file apart."""
    identities = []
    for path in paths:
        jpath, fs = _hadoop_path(spark, path)
        status = fs.getFileStatus(jpath)
        identities.append((path, int(status.getLen()), int(status.getModificationTime())))
    return identities


def _list_file(spark: SparkSession, path: str) -> list:
    jpath, fs = _hadoop_path(spark, path)
    return [fs.getFileStatus(jpath)] if fs.isFile(jpath) else []


def _file_key(spark: SparkSession, path: str) -> str:
    """A file's last two path components as ``input_file_name()`` spells them (URI-encoded)."""
    jvm: Any = spark._jvm
    uri = str(jvm.org.apache.hadoop.fs.Path(path).toUri().toString())
    return "/".join(uri.rsplit("/", 2)[-2:])


def _regex_literal(text: str) -> str:
    """``text`` as a Java regex matching it literally (special characters escaped, a tab kept bare)."""
    return "".join(f"\\{c}" if c in _REGEX_SPECIAL else c for c in text)


def column_reasons(column: LogColumn) -> list[str]:
    """The reason codes a value of ``column`` can get, in checking order."""
    if column.kind in ("integer", "float"):
        return ["bad_numeric"]
    if column.kind == "timestamp":
        return ["bad_timestamp"]
    codes = ["value_too_long"] if column.kind in ("categorical", "multi") and column.max_length else []
    return codes + (["bad_categorical"] if column.kind == "categorical" and column.pattern else [])


def _ddl(name: str, type_: str) -> str:
    return f"`{name}` {type_}"


class LogFormat:
    """The Spark expressions that read, validate and parse the records of one :class:`LogSchema`.

    Records flow as ``read_days`` rows (``raw_line``, ``day``, ``source_file``) -> ``rejected``
    (the invalid ones, with ``reason`` and ``field``) to quarantine, the others -> ``parse_valid``
    (typed columns). Built-in Spark functions only: no Python runs per row.
    """

    def __init__(self, schema: LogSchema) -> None:
        if reserved := {c.name for c in schema.columns} & set(RESERVED):
            raise ValueError(f"schema {schema.name}: column names {sorted(reserved)} are reserved")
        self.schema = schema
        self._delimiter = _regex_literal(schema.delimiter)
        # The Criteo fast path: a 0/1 label parsed straight to an int.
        self._binary_label = schema.positive == ("1",) and schema.negative == ("0",)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every reason code a record of this schema can get, in checking order."""
        codes = [RECORD_REASONS[self.schema.format], "bad_label"]
        codes += [code for c in self.schema.columns for code in column_reasons(c)]
        return tuple(dict.fromkeys(codes))

    @property
    def rules(self) -> dict[str, Any]:
        """Everything that decides a record's validity and parse (what a day cache is keyed on)."""
        return {"schema": self.schema.to_dict(), "reasons": self.reasons, "valid_line": self.valid_line}

    # -- reading ------------------------------------------------------------------------------

    def read_days(self, spark: SparkSession, files_by_day: Mapping[dt.date, Sequence[str]]) -> DataFrame:
        """The records of several days' files (``day_paths``) in one scan: ``raw_line`` (string),
        ``day`` (date of the file's folder), ``source_file`` (file name). A text header line is
        dropped (it is not a record).

        One scan, not a union of one per day: the plan is analysed and code-generated once instead
        of once per day, a fixed cost of every job (benchmarks/README.md). A record's day is looked
        up from its file's last two path components (``date=D/name`` or ``root/day_N``, unique in
        both layouts); a record of a file missing from the map would get a null day (the
        preprocessing job checks its per-day counts against the total).

        ``source_file`` comes from ``input_file_name()``, not the ``_metadata`` column: Spark
        reads all file metadata for every row once ``_metadata`` is referenced, used or not.
        """
        keys = {_file_key(spark, path): day for day, paths in files_by_day.items() for path in paths}
        if len(keys) != sum(map(len, files_by_day.values())):
            raise ValueError(f"input files with the same folder and name: {dict(files_by_day)}")
        if len(files_by_day) == 1:  # one day (scoring): a constant, no lookup per record
            day = F.lit(next(iter(files_by_day)))
        else:
            file_day = F.create_map(*(x for key, d in keys.items() for x in (F.lit(key), F.lit(d))))
            day = file_day[F.substring_index(F.input_file_name(), "/", -2)]
        paths = [path for day_files in files_by_day.values() for path in day_files]
        source = F.substring_index(F.input_file_name(), "/", -1).alias("source_file")
        if self.schema.format == "parquet":
            rows = spark.read.parquet(*paths)
            if missing := [c.name for c in self.schema.columns if c.name not in rows.columns]:
                raise ValueError(f"Parquet input lacks columns {missing} of log schema {self.schema.name}")
            record = F.to_json(F.struct(*(F.col(f"`{c.name}`") for c in self.schema.columns)))
            return rows.select(record.alias("raw_line"), day.alias("day"), source)
        lines = spark.read.text(paths)
        if self.schema.header:
            lines = lines.where(
                F.col("value") != F.lit(self.schema.delimiter.join(c.name for c in self.schema.columns))
            )
        return lines.select(F.col("value").alias("raw_line"), day.alias("day"), source)

    def read_day(
        self,
        spark: SparkSession,
        input_root: str,
        day: dt.date,
        layout: str = "auto",
        day0_date: dt.date | None = None,
    ) -> DataFrame:
        """One day's records (``read_days`` of its files)."""
        return self.read_days(spark, {day: day_paths(spark, input_root, day, layout, day0_date)})

    # -- validation ---------------------------------------------------------------------------

    def _value_regex(self, column: LogColumn) -> str:
        """The regex one text value of ``column`` must match in full (empty allowed: missing)."""
        other = f"[^{self._delimiter}]"
        if column.kind == "label":
            values = [*self.schema.positive, *self.schema.negative]
            if all(len(v) == 1 for v in values):
                return f"[{''.join(_regex_literal(v) for v in sorted(values))}]"
            return f"(?:{'|'.join(_regex_literal(v) for v in values)})"
        if column.kind == "integer":
            return INTEGER_VALUE
        if column.kind == "float":
            return FLOAT_VALUE
        if column.kind == "categorical" and column.pattern:
            return f"(?:{column.pattern})?+"
        if column.kind in ("categorical", "multi") and column.max_length:
            if column.kind == "categorical":
                return f"{other}{{0,{column.max_length}}}+"
            item_char = f"[^{self._delimiter}{_regex_literal(column.item_delimiter)}]"
            item = f"{item_char}{{0,{column.max_length}}}+"
            return f"(?:{item}(?:{_regex_literal(column.item_delimiter)}{item})*+)?+"
        return f"{other}*+"

    @property
    def valid_line(self) -> str | None:
        """Text: the regex a valid line matches (runs of like columns as one repeated group; with
        timestamps, their values must also parse). None for JSON and Parquet records."""
        if self.schema.format != "text":
            return None
        regexes = [self._value_regex(c) for c in self.schema.columns]
        parts = [regexes[0]]
        for regex, run in groupby(regexes[1:]):
            count = len(list(run))
            parts.append(f"(?:{self._delimiter}{regex}){{{count}}}+" if count > 1 else f"{self._delimiter}{regex}")
        return f"^{''.join(parts)}$"

    def _split(self, raw_line: Column) -> Column:
        """A record split into its values: a text line's array of strings, a JSON record's struct
        (``_record_ddl``; null when it is not a JSON object)."""
        if self.schema.format == "text":
            return F.split(raw_line, self._delimiter, -1)
        return F.from_json(raw_line, self._record_ddl(), {"columnNameOfCorruptRecord": "_corrupt_record"})

    def _values(self, split: Column) -> tuple[dict[str, Column], Column]:
        """Each column's raw value in a ``_split`` record (a string; for a JSON or Parquet multi
        column an array of strings) and whether the record as a whole is malformed."""
        if self.schema.format == "text":
            values = {c.name: split[i] for i, c in enumerate(self.schema.columns)}
            return values, F.size(split) != len(self.schema.columns)
        values = {c.name: split[c.name] for c in self.schema.columns}
        return values, split.isNull() | split["_corrupt_record"].isNotNull()

    def _record_ddl(self) -> str:
        """JSON records as strings (a JSON number's text, too), multi columns as string arrays."""
        types = [_ddl(c.name, "ARRAY<STRING>" if c.kind == "multi" else "STRING") for c in self.schema.columns]
        return ", ".join([*types, "_corrupt_record STRING"])

    def _item_array(self, column: LogColumn, value: Column) -> Column:
        items = F.split(value, _regex_literal(column.item_delimiter), -1) if self.schema.format == "text" else value
        return F.filter(items, lambda item: item != F.lit(""))

    def _timestamp(self, column: LogColumn, value: Column) -> Column:
        """A timestamp value parsed; null when empty or unparsable."""
        if column.time_format == "unix":
            seconds = F.when(value.rlike(f"^{INTEGER_VALUE}$"), value.cast("long"))
            return F.from_utc_timestamp(F.timestamp_seconds(seconds), self.schema.time_zone)
        return F.try_to_timestamp(value, F.lit(column.time_format))

    def _problem(self, column: LogColumn, code: str, value: Column) -> Column:
        """Whether ``value`` (of ``column``) has the problem ``code`` (one of its ``column_reasons``)."""
        present = value.isNotNull() if column.kind == "multi" else value.isNotNull() & (value != F.lit(""))
        if column.name == self.schema.event_time:  # a row's day: it may not be missing
            present = F.lit(True)
        tests = {
            "bad_numeric": lambda: ~value.rlike(f"^{self._value_regex(column)}$"),
            "bad_categorical": lambda: ~value.rlike(f"^(?:{column.pattern})$"),
            "bad_timestamp": lambda: self._timestamp(column, value).isNull(),
            "value_too_long": lambda: (
                F.coalesce(
                    F.exists(self._item_array(column, value), lambda item: F.length(item) > column.max_length),
                    F.lit(False),
                )
                if column.kind == "multi"
                else F.length(value) > column.max_length
            ),
        }
        return present & tests[code]()

    def _checks(self) -> list[tuple[str, str | None]]:
        """(reason code, field at fault) of every check of a record, in checking order: the
        record's shape, its label, then each column's ``column_reasons``."""
        checks: list[tuple[str, str | None]] = [(RECORD_REASONS[self.schema.format], None), ("bad_label", None)]
        return checks + [(code, c.name) for c in self.schema.columns for code in column_reasons(c)]

    def _first_problem(self, values: dict[str, Column], malformed: Column) -> Column:
        """The position in ``_checks`` of the first check a record fails; null if none fails.

        The columns checked alike (same kind and rules) are checked by one higher-order function
        over their values rather than by an expression each: the code Spark generates per record
        stays small whatever the number of columns (a generated method of more than 8,000 bytes of
        bytecode is never compiled by the JIT, and runs interpreted on every record).
        """
        label = values[self.schema.label]
        found = [
            F.when(malformed, 0),
            F.when(label.isNull() | ~label.isin(*self.schema.positive, *self.schema.negative), 1),
        ]
        alike: dict[tuple[str, LogColumn, bool], list[tuple[int, str]]] = {}
        for position, (code, name) in enumerate(self._checks()[2:], start=2):
            column = self.schema.column(str(name))
            rules = (code, replace(column, name=""), name == self.schema.event_time)
            alike.setdefault(rules, []).append((position, column.name))
        for (code, _, _), checked in alike.items():
            found.append(self._first_failing(code, [p for p, _ in checked], [n for _, n in checked], values))
        return F.least(*found)

    def _first_failing(
        self, code: str, positions: Sequence[int], names: Sequence[str], values: dict[str, Column]
    ) -> Column:
        """The first of ``positions`` whose column (of ``names``, all checked alike) has the problem
        ``code``; null if none has."""
        column = self.schema.column(names[0])  # any of them: they are checked alike
        checked = F.array(*(values[name] for name in names))
        failing = F.zip_with(
            F.array(*map(F.lit, positions)), checked, lambda at, v: F.when(self._problem(column, code, v), at)
        )
        return F.array_min(failing)  # nulls (values that passed) are skipped

    def _valid(self, raw_line: Column) -> Column:
        """The cheap test most records take: the line regex (text; timestamps must also parse),
        else no check failing."""
        values, malformed = self._values(self._split(raw_line))
        if self.valid_line is None:
            return F.coalesce(self._first_problem(values, malformed).isNull(), F.lit(False))
        timestamps = [c for c in self.schema.columns if c.kind == "timestamp"]
        parsed = [self._timestamp(c, values[c.name]).isNotNull() for c in timestamps]
        parsed = [
            ok if c.name == self.schema.event_time else (values[c.name] == F.lit("")) | ok
            for c, ok in zip(timestamps, parsed, strict=True)
        ]
        return reduce(and_, parsed, raw_line.rlike(self.valid_line))

    def with_reason(self, raw: DataFrame) -> DataFrame:
        """``raw`` plus ``reason`` and ``field`` (the column at fault): null for valid records.
        The first problem is looked for only in the records that fail the cheap ``_valid`` test."""
        line = F.col("raw_line")
        return self._named(raw.select("*", F.when(~self._valid(line), self._invalid(line)).alias("_invalid")))

    def rejected(self, raw: DataFrame) -> DataFrame:
        """The invalid records of ``raw`` with their ``reason`` and ``field``: what the jobs
        quarantine. (A filter on ``with_reason``'s reason would be pushed below it by Spark and
        evaluate the validity test twice per record, the larger part of a job's CPU.)"""
        line = F.col("raw_line")
        return self._named(raw.where(~self._valid(line)).select("*", self._invalid(line).alias("_invalid")))

    def _invalid(self, raw_line: Column) -> Column:
        """An invalid record split into its values once for all its checks, wrapped in a struct
        (a broken JSON record's split is null)."""
        return F.struct(self._split(raw_line).alias("split"))

    def _named(self, staged: DataFrame) -> DataFrame:
        """``staged`` with its ``_invalid`` column (``_invalid`` of an invalid record, null for a
        valid one) replaced by the ``reason`` and ``field`` of the record's first problem."""
        kept = [c for c in staged.columns if c != "_invalid"]
        values, malformed = self._values(F.col("_invalid.split"))
        failed = F.when(F.col("_invalid").isNotNull(), self._first_problem(values, malformed))
        checks = self._checks()
        reasons = F.array(*(F.lit(code) for code, _ in checks))
        fields = F.array(*(F.lit(field).cast("string") for _, field in checks))
        return staged.select(*kept, failed.alias("_failed")).select(
            *kept, reasons[F.col("_failed")].alias("reason"), fields[F.col("_failed")].alias("field")
        )

    # -- parsing ------------------------------------------------------------------------------

    def parse_valid(self, lines: DataFrame) -> DataFrame:
        """Typed rows of records known to be valid (``read_days`` rows, invalid ones removed).

        Out: ``impression_id`` (long), ``day`` (the event time's date with an ``event_time``
        column, else the folder's), the label (int 0/1), then the schema's feature fields
        (``LogSchema.feature_kinds``): integer as long, float as double, categorical as string,
        multi as an array of at most ``max_items`` non-empty strings (empty when missing); other
        empty values are null.
        """
        line = F.col("raw_line")
        staged = lines.select(
            F.xxhash64("day", "source_file", line).alias("impression_id"),
            F.col("day").alias("_folder_day"),
            self._record(line).alias("_record"),
        )
        values = {c.name: self._typed(c, F.col("_record")[c.name]) for c in self.schema.columns}
        features = []
        for c in self.schema.columns:
            if c.kind in ("integer", "float", "categorical"):
                features.append(values[c.name].alias(c.name))
            elif c.kind == "multi":
                items = F.coalesce(self._item_array(c, values[c.name]), F.array().cast("array<string>"))
                features.append(F.slice(items, 1, c.max_items).alias(c.name))
        day, derived = F.col("_folder_day"), []
        if self.schema.event_time:
            column = self.schema.column(self.schema.event_time)
            at = self._timestamp(column, values[column.name])
            day = F.to_date(at)
            functions = {"hour": F.hour, "weekday": F.dayofweek}
            derived = [functions[d](at).alias(f"{column.name}_{d}") for d in self.schema.derived]
        label = values[self.schema.label]
        if not self._binary_label:
            label = F.when(label.isin(*self.schema.positive), 1).otherwise(0)
        return staged.select("impression_id", day.alias("day"), label.alias(self.schema.label), *features, *derived)

    def _record(self, line: Column) -> Column:
        """A record's values as one struct: text through Spark's CSV parser, typed (one expression
        instead of one per column keeps the code generated per row small enough for the JIT;
        quoting off, as the line regex split fields on the bare delimiter), JSON and Parquet
        records as strings (``_record_ddl``), typed by ``_typed``."""
        if self.schema.format != "text":
            return F.from_json(line, self._record_ddl())
        types = {"integer": "BIGINT", "float": "DOUBLE"}
        ddl = ", ".join(
            _ddl(c.name, "INT" if c.kind == "label" and self._binary_label else types.get(c.kind, "STRING"))
            for c in self.schema.columns
        )
        # PERMISSIVE, not FAILFAST: a filter on parsed columns (e.g. the event day) may be pushed
        # below the anti-join that drops quarantined lines, so the parser can meet them.
        return F.from_csv(line, ddl, {"sep": self.schema.delimiter, "quote": "\u0000", "mode": "PERMISSIVE"})

    def _typed(self, column: LogColumn, value: Column) -> Column:
        """A ``_record`` value as its kind's type (text is typed by the CSV parser already)."""
        types = {"integer": "long", "float": "double"}
        if self.schema.format == "text" or column.kind not in types:
            return value
        return value.cast(types[column.kind])


def without_quarantined(lines: DataFrame, quarantine: str, quarantined_rows: int) -> DataFrame:
    """``lines`` (``LogFormat.read_days`` rows) minus the ``quarantined_rows`` lines written to the
    ``quarantine`` Parquet (``quarantined`` output, any partitioning): the valid lines, for
    ``parse_valid``. With none quarantined, ``lines`` as they are (no join, no read).

    A job writes its quarantine in a pass of its own, the only one that evaluates the validity
    regex (a large share of a job's CPU); a later pass drops those few lines with an anti-join
    (a hash per line, broadcast while the quarantine is small) instead of evaluating it again.
    """
    if quarantined_rows == 0:
        return lines
    invalid = lines.sparkSession.read.schema("raw_bytes BINARY").parquet(quarantine)
    # On the bytes: a line that is not valid UTF-8 is quarantined with a readable rendering that
    # no longer equals it.
    return lines.join(invalid, _raw_bytes(F.col("raw_line")) == invalid["raw_bytes"], "left_anti")


def _raw_bytes(line: Column) -> Column:
    """A line's bytes exactly as read (a Spark string holds the file's bytes, valid UTF-8 or not)."""
    return line.cast("binary")


def quarantined(rejected: DataFrame) -> DataFrame:
    """``LogFormat.rejected`` records, losslessly and readably: ``raw_bytes`` (the line's bytes as
    read), ``raw_line`` (the same line as valid UTF-8, an invalid byte sequence replaced by U+FFFD:
    Parquet strings, pandas and pyarrow require valid UTF-8), ``day``, ``reason`` and ``field`` (the
    column at fault; null for a problem of the whole record or its label)."""
    return rejected.select(
        _raw_bytes(F.col("raw_line")).alias("raw_bytes"),
        F.make_valid_utf8("raw_line").alias("raw_line"),
        "day",
        "reason",
        "field",
    )
