"""The daily preprocessing job: raw click logs of any declared schema in, encoded
train/validation/test Parquet and feature spec out.

For an end date D the test days are the ``test_days`` days ending on D (none in the daily
pipeline, which scores the next day instead), the validation days the ``validation_days`` days
before them, and the training days the ``train_days`` days before those. With
``validation_fraction`` instead of validation days, a seeded hash of each training row's impression
id sends that fraction of the training days' rows to the validation split. Model selection
(early stopping, the kept bundle) sees the validation split only; the test split is for reports.
The feature spec is fitted on the training rows alone. Stages, each logged with its duration and
recorded in the summary:
  discover  find each day's files (a missing or empty day fails the job, or is skipped),
  validate  count each day's lines and write malformed ones to quarantine (one job, all days),
  fit       fit the feature spec on the training days' valid rows only,
  encode    encode all days with the spec in one Parquet write, partitioned by split and day,
  finalize  reconcile counts per day, save the spec and the summary, swap the output in.
Each stage reads the days it needs in one scan (``LogFormat.read_days``).

A row's day is its folder's, or with an ``event_time`` column in the log schema the date of its
event: then the ``late_days`` folders after the window are read too (rows logged late), rows are
split by event day, rows whose event falls outside the window are dropped and counted, and counts
reconcile over the whole run (lines read per folder = rows written per event day + quarantined +
outside the window) instead of day by day.

With a day cache (``Options.day_cache``, ``deepfm.prep.day_cache``), what a day's input alone decides
(its line counts, quarantined lines and value counts) is kept between runs: a daily run, whose
window shares all but one day with yesterday's, validates and counts only its new days. The
vocabularies are then summed from the kept counts, and all days are encoded as always.

Output directory (built in a staging folder, then swapped in over ``<output>`` by
``deepfm.core.fs.staged_uri``: a failed run leaves the previous output untouched, a rerun replaces
it whole):
  train/day=YYYY-MM-DD/part-*.parquet   label float32, then the spec's fields (int32 / float32)
  validation/day=YYYY-MM-DD/part-*.parquet
  test/day=YYYY-MM-DD/part-*.parquet
  quarantine/day=YYYY-MM-DD/part-*.parquet   raw_bytes (lossless), raw_line (valid UTF-8), reason, field
  feature_spec.json                     the fitted FeatureSpec (deepfm.core.features), with its log schema
  vocabularies/field=<name>/part-*.parquet   its vocabularies (value, index), written by Spark
  summary.json                          per-day counts, rejected and missing values per field, stage
                                        timings, spec version, days
Every Parquet file holds one row group of at most ``row_group_rows`` rows (Petastorm shards by
row group), and each day gets at least ``min_row_groups_per_day`` of them even when small.

The input and the output may be any URI of a file system both Spark (Hadoop) and Arrow reach
(``deepfm.core.fs``): a local path, or ``s3a://``... shared by the driver and the executors.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.core.timing import Stages
from deepfm.prep import encoding, rawlogs
from deepfm.prep.day_cache import DayCache
from deepfm.prep.encoding import FeatureConfig
from deepfm.prep.rawlogs import LogFormat

log = logging.getLogger(__name__)

SUMMARY_FILENAME = "summary.json"
SPLITS = ("train", "validation", "test")
QUARANTINE = "quarantine"
QUARANTINE_SCHEMA = pa.schema(
    [("raw_bytes", pa.binary()), ("raw_line", pa.string()), ("reason", pa.string()), ("field", pa.string())]
)


@dataclass(frozen=True)
class Options:
    """One run of the job (the command line's options, defaults from deepfm/conf/preprocess.yaml)."""

    input: str
    output: str
    end_date: dt.date
    features: FeatureConfig  # with the log schema of the input (features.schema)
    train_days: int = 7
    validation_days: int = 1  # days before the test window; 0 with validation_fraction
    test_days: int = 1
    validation_fraction: float = 0.0  # > 0: this share of the training days' rows, by a seeded hash
    validation_seed: int = 0
    layout: str = "auto"
    day0_date: dt.date | None = None
    skip_missing_days: bool = False
    row_group_rows: int = 131_072
    min_row_groups_per_day: int = 4
    day_cache: str | None = None  # folder (path or URI) of per-day results kept between runs (None: off)
    late_days: int = 1  # event-time logs: folders after the window read for rows logged late


@dataclass
class DayCounts:
    split: str
    rows_read: int = 0
    rows_quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    rows_written: int = 0

    @classmethod
    def validated(cls, split: str, rows_read: int, quarantined_by_reason: Mapping[str, int]) -> DayCounts:
        """A day's counts after validation (``rows_quarantined`` is the sum over reasons)."""
        by_reason = {reason: int(n) for reason, n in quarantined_by_reason.items()}
        return cls(split, int(rows_read), sum(by_reason.values()), by_reason)

    @property
    def rows_valid(self) -> int:
        return self.rows_read - self.rows_quarantined


@dataclass(frozen=True)
class Window:
    """The days of one run by split: training, then validation, then test days, ending on the end
    date; with ``validation_fraction`` the validation rows are a hashed share of the training days'."""

    train: list[dt.date]
    validation: list[dt.date]
    test: list[dt.date]
    validation_fraction: float = 0.0
    validation_seed: int = 0

    @classmethod
    def of(cls, opts: Options) -> Window:
        if opts.train_days < 1 or opts.validation_days < 0 or opts.test_days < 0:
            raise ValueError("train_days must be >= 1, validation_days and test_days >= 0")
        if (opts.validation_days > 0) == (opts.validation_fraction > 0):
            raise ValueError("the validation split is either validation_days > 0 or validation_fraction > 0")
        if not 0.0 <= opts.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1)")
        days = opts.train_days + opts.validation_days + opts.test_days
        window = [opts.end_date - dt.timedelta(days=k) for k in range(days - 1, -1, -1)]
        train, rest = window[: opts.train_days], window[opts.train_days :]
        validation, test = rest[: opts.validation_days], rest[opts.validation_days :]
        return cls(train, validation, test, opts.validation_fraction, opts.validation_seed)

    @property
    def days(self) -> list[dt.date]:
        return [*self.train, *self.validation, *self.test]

    def split(self, day: dt.date) -> str:
        """The split of a whole day (a training day also feeds validation rows by fraction); ``late``
        for a folder after the window, read for the late rows of event-time logs."""
        if day > self.days[-1]:
            return "late"
        return "test" if day in self.test else "validation" if day in self.validation else "train"

    def split_of_rows(self) -> Column:
        """Each encoded row's split: by its day, and on training days by the hash of its impression id."""
        split = F.when(F.col("day").isin(self.test), "test").when(F.col("day").isin(self.validation), "validation")
        if self.validation_fraction:
            split = split.when(self.hashed_validation(), "validation")
        return split.otherwise("train")

    def hashed_validation(self) -> Column:
        """True for the rows of training days that the validation fraction takes (a seeded hash of
        the impression id: stable across reruns, independent of how Spark splits the files)."""
        bucket = F.pmod(F.xxhash64(F.lit(self.validation_seed), F.col("impression_id")), F.lit(1_000_000))
        return bucket < F.lit(round(self.validation_fraction * 1_000_000))


def _skip_or_raise(error: rawlogs.InputDayError, skip: bool, skipped: dict[str, str]) -> None:
    if not skip:
        raise error
    log.warning("skipping %s", error)
    skipped[error.day.isoformat()] = error.problem


def discover(
    spark: SparkSession, opts: Options, days: list[dt.date], skipped: dict[str, str]
) -> tuple[str, dict[dt.date, list[str]]]:
    """The input layout and each available day's files (``rawlogs.day_paths``); with event-time
    logs also the ``late_days`` folders after the window that exist (none is required)."""
    layout = rawlogs.detect_layout(spark, opts.input) if opts.layout == "auto" else opts.layout
    files = {}
    for day in days:
        try:
            files[day] = rawlogs.day_paths(spark, opts.input, day, layout, opts.day0_date)
        except rawlogs.InputDayError as error:
            _skip_or_raise(error, opts.skip_missing_days, skipped)
    late = [days[-1] + dt.timedelta(days=k) for k in range(1, opts.late_days + 1)]
    for day in late if opts.features.schema.event_time else []:
        try:
            files[day] = rawlogs.day_paths(spark, opts.input, day, layout, opts.day0_date)
        except rawlogs.InputDayError as error:
            log.info("no late rows read from %s: %s", day, error.problem)
    log.info("input %s (%s layout): %d of %d days found", opts.input, layout, len(files), len(days))
    return layout, files


def _rows_per_day(days: list[dt.date], where: Column | None = None, suffix: str = "") -> list[Column]:
    """Observation metrics: each day's rows (meeting ``where``), named ``<day><suffix>``."""
    where = F.lit(True) if where is None else where  # the optimizer drops "AND true"
    return [F.count_if((F.col("day") == F.lit(d)) & where).alias(f"{d.isoformat()}{suffix}") for d in days]


def validate_days(
    spark: SparkSession, logs: LogFormat, files: dict[dt.date, list[str]], window: Window, quarantine_dir: str
) -> dict[dt.date, DayCounts]:
    """Count every day's records and write the malformed ones (``rawlogs.quarantined``) to
    ``<quarantine_dir>/day=<day>/``, in one Spark job over all days.

    Lines read per day are counted before the filter and quarantined ones per day and reason
    after it, both observed during the one write. A day without a malformed line gets an empty
    Parquet file, so every validated day has its folder. Raises ``Py4JJavaError`` /
    ``PySparkException`` when some file cannot be read (``validate`` then finds which).
    """
    days = sorted(files)
    read, kept = Observation("read"), Observation("quarantined")
    lines = logs.read_days(spark, files)
    rejected = logs.rejected(lines.observe(read, F.count(F.lit(1)).alias("all"), *_rows_per_day(days)))
    by_reason = (c for r in logs.reasons for c in _rows_per_day(days, F.col("reason") == r, f" {r}"))
    # Appended: the day-by-day fallback adds one day's folder per job (the folder is new each run).
    rawlogs.quarantined(rejected).observe(kept, *by_reason).write.partitionBy("day").mode("append").parquet(
        fs.hadoop_uri(quarantine_dir)
    )
    rows_read, rows_kept = read.get, kept.get  # each .get converts the whole row from the JVM
    if rows_read["all"] != sum(rows_read[d.isoformat()] for d in days):  # a file whose day was not found
        raise RuntimeError(f"lines read {rows_read} do not add up to the total: a file without a day")
    counts = {}
    for day in days:
        reasons = {r: rows_kept[f"{day.isoformat()} {r}"] for r in logs.reasons}
        counts[day] = DayCounts.validated(window.split(day), rows_read[day.isoformat()], reasons)
        if not fs.exists(_day_dir(quarantine_dir, day)):
            _write_empty_parquet(_day_dir(quarantine_dir, day), QUARANTINE_SCHEMA)
        log.info(
            "validated %s: %d lines, %d quarantined %s",
            day,
            counts[day].rows_read,
            counts[day].rows_quarantined,
            counts[day].quarantined_by_reason,
        )
    return counts


def _write_empty_parquet(directory: str, schema: pa.Schema) -> None:
    filesystem, path = fs.arrow(directory)
    filesystem.create_dir(path)
    pq.write_table(schema.empty_table(), f"{path}/part-00000-empty.parquet", filesystem=filesystem)


def validate(
    spark: SparkSession,
    logs: LogFormat,
    files: dict[dt.date, list[str]],
    window: Window,
    quarantine_dir: str,
    skip: bool,
    skipped: dict[str, str],
    cache: DayCache | None = None,
) -> dict[dt.date, DayCounts]:
    """Validate every day (``validate_days``); a day without a line, or that cannot be read,
    fails the job naming it or, with ``skip``, is skipped.

    Days whose validation ``cache`` keeps are taken from it; the others are validated in one job,
    and kept. Only when that job fails are the days validated one by one, to name the unreadable
    one.
    """
    counts = {}
    if cache:
        for day in files:
            if kept := cache.validation(day, _day_dir(quarantine_dir, day)):
                counts[day] = DayCounts.validated(window.split(day), *kept)
    fresh = {day: day_files for day, day_files in files.items() if day not in counts}
    log.info("validating %d days%s", len(fresh), f" ({len(counts)} kept in the day cache)" if cache else "")
    try:
        results: Mapping[dt.date, DayCounts | rawlogs.InputDayError] = (
            validate_days(spark, logs, fresh, window, quarantine_dir) if fresh else {}
        )
    except (Py4JJavaError, PySparkException) as exc:
        log.warning(
            "validating all days in one job failed (%s); validating day by day to find the unreadable one",
            str(exc).strip().splitlines()[0][:300],
        )
        for day in fresh:
            fs.remove_tree(_day_dir(quarantine_dir, day))
        results = _validate_day_by_day(spark, logs, fresh, window, quarantine_dir)
    for day, result in results.items():
        if isinstance(result, DayCounts) and result.rows_read == 0:
            result = rawlogs.InputDayError(day, "no lines")
        if isinstance(result, rawlogs.InputDayError):
            _skip_or_raise(result, skip, skipped)
            fs.remove_tree(_day_dir(quarantine_dir, day))
            continue
        counts[day] = result
        if cache:
            cache.store_validation(day, result.rows_read, result.quarantined_by_reason, _day_dir(quarantine_dir, day))
    return counts


def _validate_day_by_day(
    spark: SparkSession, logs: LogFormat, files: dict[dt.date, list[str]], window: Window, quarantine_dir: str
) -> dict[dt.date, DayCounts | rawlogs.InputDayError]:
    """``validate_days`` of one day at a time, each day's counts or the error naming it."""
    results: dict[dt.date, DayCounts | rawlogs.InputDayError] = {}
    for day, day_files in files.items():
        try:
            results.update(validate_days(spark, logs, {day: day_files}, window, quarantine_dir))
        except (Py4JJavaError, PySparkException) as exc:
            results[day] = rawlogs.InputDayError(day, f"unreadable: {str(exc).strip().splitlines()[0]}")
    return results


def _day_dir(root: str, day: dt.date) -> str:
    return fs.join(root, f"day={day.isoformat()}")


def valid_rows(
    spark: SparkSession,
    logs: LogFormat,
    files: dict[dt.date, list[str]],
    counts: dict[dt.date, DayCounts],
    days: list[dt.date],
    quarantine_dir: str,
) -> DataFrame:
    """Typed valid rows of the folders of ``days``: their records (one scan) minus the quarantined ones."""
    lines = logs.read_days(spark, {d: files[d] for d in days})
    quarantined = sum(counts[d].rows_quarantined for d in days)
    return logs.parse_valid(rawlogs.without_quarantined(lines, fs.hadoop_uri(quarantine_dir), quarantined))


def fit_spec(
    spark: SparkSession,
    logs: LogFormat,
    files: dict[dt.date, list[str]],
    counts: dict[dt.date, DayCounts],
    out_dir: str,
    features: FeatureConfig,
    end_date: dt.date,
    window: Window,
    cache: DayCache | None = None,
) -> FeatureSpec:
    """Fit the feature spec on the valid training rows (never a validation or test row), its
    vocabularies stored in ``out_dir`` (the run's output, holding the quarantine); with a
    ``cache``, the vocabularies from the days' value counts kept there (``day_value_counts``: whole
    days, so not when the validation split is a fraction of the training days' rows, nor with
    event-time logs, whose training rows may sit in any folder of the run)."""
    train_days = [d for d in sorted(counts) if counts[d].split == "train"]
    if not train_days:
        raise RuntimeError(f"no training day available for end date {end_date}")
    metadata = {
        "end_date": end_date.isoformat(),
        "source_days": [d.isoformat() for d in train_days],
        "validation_days": [d.isoformat() for d in sorted(counts) if counts[d].split == "validation"],
        "validation_fraction": window.validation_fraction,
        "test_days": [d.isoformat() for d in sorted(counts) if counts[d].split == "test"],
        "train_rows": sum(counts[d].rows_valid for d in train_days),
        "rows_per_day": {d.isoformat(): counts[d].rows_valid for d in train_days},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    rows_of = partial(valid_rows, spark, logs, files, counts, quarantine_dir=fs.join(out_dir, QUARANTINE))
    fields = features.vocabulary_fields
    multi = [name for name in fields if features.plan(name).kind == "multi"]
    if logs.schema.event_time:
        train, cache = rows_of(sorted(counts)).where(F.col("day").isin(window.train)), None
    else:
        train = rows_of(train_days)
    if window.validation_fraction:
        train, cache = train.where(~window.hashed_validation()), None
    value_counts = day_value_counts(spark, rows_of, train_days, fields, multi, cache) if cache and fields else None
    return encoding.fit(train, features, out_dir, metadata, value_counts)


def day_value_counts(
    spark: SparkSession,
    rows_of: Callable[[list[dt.date]], DataFrame],
    days: list[dt.date],
    fields: list[str],
    multi: list[str],
    cache: DayCache,
) -> DataFrame:
    """``encoding.value_counts`` of ``fields`` (``multi``: the multi-valued ones) on each of ``days``
    (one row per day and value), read from ``cache``; the days not kept there are counted first,
    on ``rows_of(those days)`` (``valid_rows``, one job), and kept."""
    missing = [day for day in days if not cache.has_values(day, fields)]
    log.info("counting values of %d days (%d kept in the day cache)", len(missing), len(days) - len(missing))
    if missing:
        staging = cache.scratch_dir()
        try:
            per_day = encoding.value_counts(rows_of(missing), fields, by=["day"], multi=multi)
            per_day.write.partitionBy("day").parquet(fs.hadoop_uri(staging))
            for day in missing:
                if not fs.exists(_day_dir(staging, day)):  # no value at all that day
                    _write_empty_parquet(_day_dir(staging, day), to_arrow_schema(per_day.drop("day").schema))
                cache.store_values(day, fields, _day_dir(staging, day))
        finally:
            fs.remove_tree(staging)
    return spark.read.parquet(*(fs.hadoop_uri(cache.values_path(d, fields)) for d in days))


def rows_per_file(counts: dict[dt.date, DayCounts], row_group_rows: int, min_row_groups_per_day: int) -> int:
    """File (= row group) size cap: ``row_group_rows``, lowered so the smallest day still gets
    ``min_row_groups_per_day`` row groups."""
    smallest = min((c.rows_valid for c in counts.values() if c.rows_valid), default=row_group_rows)
    return max(1, min(row_group_rows, math.ceil(smallest / max(1, min_row_groups_per_day))))


def encode_days(
    spark: SparkSession,
    logs: LogFormat,
    files: dict[dt.date, list[str]],
    counts: dict[dt.date, DayCounts],
    spec: FeatureSpec,
    out_dir: str,
    max_rows_per_file: int,
    window: Window,
) -> dict[str, Any]:
    """Encode every day with ``spec`` and write ``<out_dir>/<split>/day=<day>/``.

    One Spark job for all days (the vocabularies are broadcast once), written partitioned by
    split (``Window.split_of_rows``) and day, then the ``split=`` folders renamed to plain
    ``train/``, ``validation/`` and ``test/``. Sets ``rows_written`` in ``counts`` from rows
    observed on their way to the writer (by event day for event-time logs, whose rows outside the
    window are dropped). Returns the missing values per field and the rows outside the window,
    observed in the same pass.
    """
    written = Observation("written")
    rows = valid_rows(spark, logs, files, counts, sorted(counts), fs.join(out_dir, QUARANTINE))
    # Only event-time rows can fall outside the window (a folder's rows are its day's).
    in_window = (F.col("day").isin(window.days) if logs.schema.event_time else F.lit(True)).alias("_in_window")
    columns: list[Column | str] = [*spec.encoded_columns, "day", window.split_of_rows().alias("split"), in_window]
    encoded = encoding.encode(rows, spec, fill=False).select(*columns)
    # One observation, next to the writer: one of its own before encoding would end the pass's
    # generated code there (~1.3 s per 1M rows). It sees the rows outside the window too.
    metrics = [
        *_rows_per_day(window.days),
        F.count_if(~F.col("_in_window")).alias("outside the window"),
        *encoding.present_counts(spec),
    ]
    staging = fs.join(out_dir, "_encoded")
    (
        encoding.fill_missing(encoded.observe(written, *metrics).where("_in_window"), spec)
        .select(*spec.encoded_columns, "day", "split")
        .write.partitionBy("split", "day")
        .option("maxRecordsPerFile", max_rows_per_file)
        .mode("overwrite")
        .parquet(fs.hadoop_uri(staging))
    )
    observed = written.get
    outside = int(observed.pop("outside the window"))
    present = {f.name: int(observed.pop(f"present {f.name}")) for f in spec.fields}
    rows_observed = outside + sum(observed.values())  # the rest: the rows of each window day
    missing = {name: rows_observed - n for name, n in present.items()}
    for day_text, n in observed.items():
        day = dt.date.fromisoformat(day_text)
        if day in counts or n:  # an event day whose own folder is missing may still have late rows
            counts.setdefault(day, DayCounts(window.split(day))).rows_written = int(n)
    for split in SPLITS:
        if fs.exists(fs.join(staging, f"split={split}")):
            fs.move(fs.join(staging, f"split={split}"), fs.join(out_dir, split))
    fs.remove_tree(staging)
    return {"rows_outside_window": outside, "missing_by_field": missing}


def rejected_by_field(quarantine_dir: str) -> dict[str, dict[str, int]]:
    """Quarantined records per field at fault and reason (``(record)``: the whole record or its
    label), read back from the quarantine by Arrow on the driver a batch at a time (two columns of
    a fraction of the input): a Spark job for it cost ~0.13 s of every run on 2 cores."""
    filesystem, path = fs.arrow(quarantine_dir)
    counts: Counter[tuple[str, str]] = Counter()
    for batch in ds.dataset(path, filesystem=filesystem, format="parquet").to_batches(columns=["field", "reason"]):
        grouped = pa.Table.from_batches([batch]).group_by(["field", "reason"]).aggregate([("reason", "count")])
        for row in grouped.to_pylist():
            counts[row["field"] or "(record)", row["reason"]] += row["reason_count"]
    by_field: dict[str, dict[str, int]] = {}
    for (field_name, reason), n in sorted(counts.items()):
        by_field.setdefault(field_name, {})[reason] = n
    return by_field


def reconcile(counts: dict[dt.date, DayCounts], outside_window: int, event_time: bool) -> None:
    """Require rows read = rows written + rows quarantined, for every day; with event-time logs
    (rows read by folder, written by event day), over the run: read = written + quarantined +
    outside the window."""
    for day, c in sorted(counts.items()):
        log.info(
            "%s %-5s read %d, written %d, quarantined %d %s",
            day,
            c.split,
            c.rows_read,
            c.rows_written,
            c.rows_quarantined,
            c.quarantined_by_reason,
        )
    if event_time:
        read, written, quarantined = (sum(getattr(c, k) for c in counts.values()) for k in
                                      ("rows_read", "rows_written", "rows_quarantined"))  # fmt: skip
        log.info("read %d = written %d + quarantined %d + outside the window %d", read, written, quarantined,
                 outside_window)  # fmt: skip
        if read != written + quarantined + outside_window:
            raise RuntimeError(
                f"row counts do not reconcile: read {read} != written {written} + quarantined {quarantined} "
                f"+ outside the window {outside_window}"
            )
        return
    broken = [d.isoformat() for d, c in counts.items() if c.rows_read != c.rows_written + c.rows_quarantined]
    if broken:
        raise RuntimeError(f"row counts do not reconcile (read != written + quarantined) for days {broken}")


def summarize(
    opts: Options,
    layout: str,
    spec: FeatureSpec,
    counts: dict[dt.date, DayCounts],
    skipped: dict[str, str],
    stage_seconds: dict[str, float],
    max_rows_per_file: int,
    fields: Mapping[str, Any],
    cache: DayCache | None = None,
) -> dict[str, Any]:
    """The run's summary; ``fields``: ``rejected_by_field``, ``missing_by_field`` and
    ``rows_outside_window``."""
    days = {d.isoformat(): asdict(c) for d, c in sorted(counts.items())}
    totals = {k: sum(c[k] for c in days.values()) for k in ("rows_read", "rows_written", "rows_quarantined")}
    totals["rows_outside_window"] = fields["rows_outside_window"]
    schema = opts.features.schema
    return {
        "end_date": opts.end_date.isoformat(),
        "train_days": [d for d, c in days.items() if c["split"] == "train"],
        "validation_days": [d for d, c in days.items() if c["split"] == "validation"],
        "validation_fraction": opts.validation_fraction,
        "test_days": [d for d, c in days.items() if c["split"] == "test"],
        "skipped_days": skipped,
        "input": opts.input,
        "schema": {"name": schema.name, "fingerprint": schema.fingerprint, "days_by": schema.event_time or "folder"},
        "layout": layout,
        "output": opts.output,
        "spec_version": spec.version,
        "days": days,
        "totals": totals,
        "rejected_by_field": fields["rejected_by_field"],
        "missing_by_field": fields["missing_by_field"],
        "stage_seconds": stage_seconds,
        "rows_per_file": max_rows_per_file,
        "day_cache": {"root": str(cache.root), "reused": cache.reused} if cache else None,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def run(spark: SparkSession, opts: Options) -> dict[str, Any]:
    """Run the job for ``opts.end_date``; return the summary (also saved as summary.json)."""
    stages = Stages(log)
    window = Window.of(opts)
    skipped: dict[str, str] = {}
    output = opts.output
    log.info("preprocess %s: train %s, validation %s%s, test %s -> %s", opts.end_date, _span(window.train),
             _span(window.validation), f" + {opts.validation_fraction:.0%} of the training rows" if
             opts.validation_fraction else "", _span(window.test), output)  # fmt: skip
    logs = LogFormat(opts.features.schema)
    with fs.staged_uri(output) as tmp:
        with stages("discover"):
            layout, files = discover(spark, opts, window.days, skipped)
            cache = _day_cache(spark, opts, logs, files)
        with stages("validate"):
            quarantine = fs.join(tmp, QUARANTINE)
            counts = validate(spark, logs, files, window, quarantine, opts.skip_missing_days, skipped, cache)
        with stages("fit"):
            spec = fit_spec(spark, logs, files, counts, tmp, opts.features, opts.end_date, window, cache)
        with stages("encode"):
            max_rows = rows_per_file(counts, opts.row_group_rows, opts.min_row_groups_per_day)
            fields = encode_days(spark, logs, files, counts, spec, tmp, max_rows, window)
        with stages("finalize"):
            reconcile(counts, fields["rows_outside_window"], bool(logs.schema.event_time))
            fields["rejected_by_field"] = rejected_by_field(quarantine)
            spec.save(tmp)
        summary = summarize(opts, layout, spec, counts, skipped, stages.seconds, max_rows, fields, cache)
        fs.put_json(fs.join(tmp, SUMMARY_FILENAME), summary)
    log.info("preprocess %s done: %s, spec %s", opts.end_date, summary["totals"], spec.version)
    return summary


def _day_cache(spark: SparkSession, opts: Options, logs: LogFormat, files: dict[dt.date, list[str]]) -> DayCache | None:
    """The day cache, when on: not for event-time logs, whose days are not their folders'."""
    if opts.day_cache and logs.schema.event_time:
        log.info("day cache off: the %s log dates rows by %s, not by folder", logs.schema.name, logs.schema.event_time)
    if not opts.day_cache or logs.schema.event_time:
        return None
    return DayCache.open(spark, opts.day_cache, files, logs.rules)


def _span(days: list[dt.date]) -> str:
    return f"{days[0]}..{days[-1]}" if days else "none"
