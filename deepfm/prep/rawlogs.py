"""Raw click logs: finding a day's files, reading them, and parsing lines into typed columns.

A line is Criteo's ``label \\t I1..I13 \\t C1..C26``: label 0/1, integer fields, 8-hex-digit
categorical fields; any field but the label may be empty. Two layouts of daily files:
  - ``date``: ``<root>/date=YYYY-MM-DD/<any files>`` (plain or ``.gz``),
  - ``criteo``: Criteo Terabyte's ``<root>/day_<N>[.gz]``, ``day_0`` being ``day0_date``.

``with_reason`` gives each line its quarantine reason code (null when valid) and ``parse_valid``
types the valid ones. A line is valid when it matches one regular expression (:data:`VALID_LINE`),
so validation is one regex evaluation per row; the reason is worked out only for the rare rows
that fail it.

Impression id: ``xxhash64(day, file name, raw line)``. It is stable across reruns and however
Spark splits the files, and costs nothing when unused. Byte-identical lines in the same file share an id; they are
indistinguishable impressions and get identical encodings and predictions.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

LABEL = "label"
INTEGER_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL_FIELDS = tuple(f"C{i}" for i in range(1, 27))
RAW_FIELDS = INTEGER_FIELDS + CATEGORICAL_FIELDS
N_COLUMNS = 1 + len(RAW_FIELDS)
LAYOUTS = ("date", "criteo")
# Quarantine reason codes, in the order they are checked (a row gets the first that applies).
REASONS = ("wrong_field_count", "bad_label", "bad_numeric", "bad_categorical")

# At most 18 digits so every valid value fits a long; more is reported as bad_numeric. Groups are
# non-capturing and quantifiers possessive (a field cannot match a tab, so nothing is lost by not
# backtracking): this regex is evaluated on every line and that makes it much cheaper. For the
# same reason the character classes list single characters, not ranges: java.util.regex tests a
# class of single characters with one bit-set lookup per input character, ranges with a chain of
# predicates (figures: benchmarks/README.md).
INTEGER_VALUE = r"(?:-?[0123456789]{1,18}+)?+"
CATEGORICAL_VALUE = r"(?:[0123456789abcdef]{8})?+"
_INTEGERS = f"(?:\t{INTEGER_VALUE}){{{len(INTEGER_FIELDS)}}}+"
VALID_LINE = f"^[01]{_INTEGERS}(?:\t{CATEGORICAL_VALUE}){{{len(CATEGORICAL_FIELDS)}}}+$"
# On a line with the right number of fields: label, then valid integer fields (a regex, not a
# higher-order function over the split fields, so the expression stays code-generated).
_VALID_INTEGERS = f"^[^\t]*+{_INTEGERS}\t"

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


def read_raw_day(
    spark: SparkSession,
    input_root: str,
    day: dt.date,
    layout: str = "auto",
    day0_date: dt.date | None = None,
) -> DataFrame:
    """One day's lines (``read_raw_days`` of its files)."""
    return read_raw_days(spark, {day: day_paths(spark, input_root, day, layout, day0_date)})


def read_raw_days(spark: SparkSession, files_by_day: Mapping[dt.date, Sequence[str]]) -> DataFrame:
    """The lines of several days' files (``day_paths``) in one scan: ``raw_line`` (string),
    ``day`` (date), ``source_file`` (file name).

    One scan, not a union of one per day: the plan is analysed and code-generated once instead
    of once per day, a fixed cost of every job (benchmarks/README.md). A line's day is looked up
    from its file's last two path components (``date=D/name`` or ``root/day_N``, unique in both
    layouts); a line of a file missing from the map would get a null day (the preprocessing job
    checks its per-day line counts against the total).

    ``source_file`` comes from ``input_file_name()``, not the ``_metadata`` column: Spark
    reads all file metadata for every row once ``_metadata`` is referenced, used or not.
    """
    keys = {_file_key(spark, path): day for day, paths in files_by_day.items() for path in paths}
    if len(keys) != sum(map(len, files_by_day.values())):
        raise ValueError(f"input files with the same folder and name: {dict(files_by_day)}")
    if len(files_by_day) == 1:  # one day (scoring): a constant, no lookup per line
        day = F.lit(next(iter(files_by_day)))
    else:
        file_day = F.create_map(*(x for key, d in keys.items() for x in (F.lit(key), F.lit(d))))
        day = file_day[F.substring_index(F.input_file_name(), "/", -2)]
    paths = [path for day_files in files_by_day.values() for path in day_files]
    return spark.read.text(paths).select(
        F.col("value").alias("raw_line"),
        day.alias("day"),
        F.substring_index(F.input_file_name(), "/", -1).alias("source_file"),
    )


def _file_key(spark: SparkSession, path: str) -> str:
    """A file's last two path components as ``input_file_name()`` spells them (URI-encoded)."""
    jvm: Any = spark._jvm
    uri = str(jvm.org.apache.hadoop.fs.Path(path).toUri().toString())
    return "/".join(uri.rsplit("/", 2)[-2:])


def reason(raw_line: Column) -> Column:
    """The quarantine reason code of a line, null when it is valid."""
    fields = F.split(raw_line, "\t", -1)
    return (
        F.when(raw_line.rlike(VALID_LINE), F.lit(None).cast("string"))
        .when(F.size(fields) != N_COLUMNS, "wrong_field_count")
        .when(~fields[0].isin("0", "1"), "bad_label")
        .when(~raw_line.rlike(_VALID_INTEGERS), "bad_numeric")
        .otherwise("bad_categorical")  # everything else in VALID_LINE checked: a categorical value
    )


def with_reason(raw: DataFrame) -> DataFrame:
    """``raw`` plus a ``reason`` column (null for valid lines)."""
    return raw.withColumn("reason", reason(F.col("raw_line")))


# Valid lines are parsed by Spark's CSV parser: one expression instead of 40 keeps the code
# generated per row small enough for the JIT to compile. Empty fields become null.
RAW_SCHEMA = ", ".join(
    [f"{LABEL} INT", *(f"{n} BIGINT" for n in INTEGER_FIELDS), *(f"{n} STRING" for n in CATEGORICAL_FIELDS)]
)
_CSV_OPTIONS = {"sep": "\t", "mode": "FAILFAST"}  # only ever given lines matching VALID_LINE


def parse_valid(lines: DataFrame) -> DataFrame:
    """Typed rows of lines known to be valid (``read_raw_days`` rows, invalid ones removed).

    Out: ``impression_id`` (long), ``day``, ``label`` (int), ``I1..I13`` (long), ``C1..C26``
    (string); empty fields are null.
    """
    line = F.col("raw_line")
    return lines.select(
        F.xxhash64("day", "source_file", line).alias("impression_id"),
        "day",
        F.from_csv(line, RAW_SCHEMA, _CSV_OPTIONS).alias("_parsed"),
    ).select("impression_id", "day", *(F.col(f"_parsed.{n}") for n in (LABEL, *RAW_FIELDS)))


def without_quarantined(lines: DataFrame, quarantine: str, quarantined_rows: int) -> DataFrame:
    """``lines`` (``read_raw_days`` rows) minus the ``quarantined_rows`` lines written to the
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


def quarantined(checked: DataFrame) -> DataFrame:
    """The invalid lines of ``with_reason`` output, losslessly and readably: ``raw_bytes`` (the
    line's bytes as read), ``raw_line`` (the same line as valid UTF-8, an invalid byte sequence
    replaced by U+FFFD: Parquet strings, pandas and pyarrow require valid UTF-8), ``day``, ``reason``."""
    return checked.where(F.col("reason").isNotNull()).select(
        _raw_bytes(F.col("raw_line")).alias("raw_bytes"),
        F.make_valid_utf8("raw_line").alias("raw_line"),
        "day",
        "reason",
    )
