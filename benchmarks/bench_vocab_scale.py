"""Benchmark the preprocessing job's categorical vocabularies at production scale (50M+ entries).

    python benchmarks/bench_vocab_scale.py [--rows 4800000] [--days 4] [--min-count 1]
        [--driver-memory 4g] [--modes vocab,hash,floor] [--bundle] [--workdir /tmp/deepfm-bench-vocab]

Generates Criteo-layout raw logs (``<workdir>/raw-.../date=YYYY-MM-DD/part-00000.tsv``, reused when
already there) whose 26 categorical fields are mostly distinct values (each field also has a few
hot values, frequent enough for a join to meet hot keys, and 2% missing values): with the default
size and ``--min-count 1``, the training days alone hold >= 50M distinct (field, value) pairs. Then
runs the preprocessing job (``deepfm.prep.preprocess.run``, the job's Spark settings, day cache off)
on the same logs once per mode, each mode in a process (and a Spark driver JVM) of its own, so that
each has its own memory peaks and a JVM that ran out of memory does not spoil the next mode:
  - ``vocab``: every categorical field by vocabulary (``min_count`` from ``--min-count``);
  - ``hash``: every categorical field hashed: the baseline, the same job without vocabularies;
  - ``floor``: not the job, but the work that an exact vocabulary job adds to the hash job when
    its vocabularies are too large to broadcast, each part done as cheaply as Spark can
    (``child_floor``); the hash job's total plus these seconds is a lower bound of such a job's,
    and says whether the target is reachable on the machine.
The window is ``--days`` days: the validation day and the test day end it, the days before are
training days (the vocabularies are fitted on those alone).

Figures per mode: the job's stage seconds (``fit``: counting, ranking and storing or collecting the
vocabularies; ``encode``: joining them, or hashing), its total, and the CPU seconds of its driver
JVM (user + system: steadier than wall time on a machine shared with other work); the spec's bytes
(``feature_spec.json``) and those of everything else in the output the spec needs (its
``vocabularies/`` folder, when the job writes one); the vocabulary entries (the spec's
cardinalities of vocabulary fields, minus index 0); and the driver's memory peaks:
  - JVM heap: the largest heap occupancy that the JVM's own GC log (``-Xlog:gc``, added to the
    driver's Java options) reports before a collection (occupancy only grows between two), or at
    the end of the run; and the largest left after a collection (an upper bound of the live data:
    G1 leaves dead old objects in place until it has marked them);
  - resident set (``VmHWM``) of the driver JVM and of the job's Python process, polled from
    /proc by this (parent) process, so they are known even when a process died.
A mode that fails (e.g. ``java.lang.OutOfMemoryError``) is reported as ``failed: <error>`` with the
figures measured until then (the stage it was in, as ``>seconds``); the next mode runs all the same.
A driver JVM may hang after an OutOfMemoryError in one of its own threads (a broadcast, the DAG
scheduler): a mode still running ``--oom-grace-minutes`` after its log reported one is killed and
failed, and so is one still running after ``--timeout-minutes``.

Targets (the issue "Vocabularies at production scale: nothing grows on the driver"): the vocabulary
job completes with the default 4 GiB driver, and takes <= 2x the hash job on the same logs; the
``floor`` mode says the lowest ratio a job that counts, then joins, could reach there. With
``--bundle``, a DeepFM bundle (embedding_dim 2, one hidden layer of 8) is saved for the vocabulary
mode's spec, in a process of its own, and its size reported (the embedding tables dominate).
The run ends with one JSON line of every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

START = dt.date(2024, 1, 1)
JOB_MODES = ("vocab", "hash")  # runs of the job: stages and an output to measure
MODES = (*JOB_MODES, "floor")
GENERATED = "_generated.json"  # written last: the logs are complete
INTEGERS, CATEGORICALS = 13, 26
# Each categorical value of a row: missing, one of HOT values of the field (Zipf-like weights:
# the top one takes about a third of P_HOT), a value of a pool of rows / POOL_DIVISOR per field
# (values seen on several days: the later days' rows find them in the vocabulary), or a fresh
# 32-bit value (all but distinct: what makes the vocabularies big).
P_MISSING, P_HOT, P_POOL = 0.02, 0.06, 0.07
HOT, POOL_DIVISOR = 8, 20
INT_DIGITS = 6  # integer values < 10**6
MB = 2**20


# -- raw logs ---------------------------------------------------------------------------------


def _spread(field: np.ndarray | int, index: np.ndarray | int, salt: int) -> np.ndarray:
    """A fixed 32-bit value per (field, index): an odd-multiplier bijection of the index."""
    x = np.asarray(index, dtype=np.uint64) * np.uint64(2654435761) + np.asarray(field, dtype=np.uint64) * np.uint64(
        0x9E3779B1
    )
    return ((x + np.uint64(salt)) * np.uint64(0x85EBCA77) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _categoricals(rng: np.random.Generator, n: int, pool: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 26) uint32 values and a missing mask."""
    u = rng.random((n, CATEGORICALS))
    fields = np.arange(CATEGORICALS, dtype=np.uint64)[None, :]
    values = rng.integers(0, 2**32, size=(n, CATEGORICALS), dtype=np.uint64).astype(np.uint32)  # fresh
    weights = 1.0 / np.arange(1, HOT + 1)
    hot_rank = rng.choice(HOT, size=(n, CATEGORICALS), p=weights / weights.sum())
    hot = (u >= P_MISSING) & (u < P_MISSING + P_HOT)
    values[hot] = _spread(np.broadcast_to(fields, hot.shape)[hot], hot_rank[hot], 1)
    pooled = (u >= P_MISSING + P_HOT) & (u < P_MISSING + P_HOT + P_POOL)
    drawn = rng.integers(0, pool, size=int(pooled.sum()))
    values[pooled] = _spread(np.broadcast_to(fields, pooled.shape)[pooled], drawn + HOT, 2)
    return values, u < P_MISSING


def _digit_tables() -> tuple[np.ndarray, np.ndarray]:
    """Byte tables: the decimal digits of 0 .. 10**INT_DIGITS - 1 (NUL-padded on the left; one more
    row, all NUL, for a missing value), and the 4 hex digits of every 16-bit number."""
    numbers = np.arange(10**INT_DIGITS, dtype=np.int64)
    powers = 10 ** np.arange(INT_DIGITS - 1, -1, -1, dtype=np.int64)  # 10^5 .. 10^0
    shown = (numbers[:, None] >= powers) | (powers == 1)  # no leading zeros; 0 is "0"
    decimal = np.zeros((10**INT_DIGITS + 1, INT_DIGITS), dtype=np.uint8)
    decimal[:-1] = np.where(shown, (numbers[:, None] // powers) % 10 + ord("0"), 0)
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    halves = np.arange(2**16, dtype=np.uint32)
    hexadecimal = hex_digits[(halves[:, None] >> np.arange(12, -1, -4, dtype=np.uint32)) & np.uint32(0xF)]
    return decimal, hexadecimal


def _lines(rng: np.random.Generator, n: int, pool: int, tables: tuple[np.ndarray, np.ndarray]) -> bytes:
    """``n`` Criteo lines, formatted without a Python loop per row: each field is written into a
    fixed-width slot of a byte matrix (by table lookups), padded with NUL bytes that are then dropped."""
    decimal, hexadecimal = tables
    width = 1 + INTEGERS * (1 + INT_DIGITS) + CATEGORICALS * 9 + 1
    out = np.zeros((n, width), dtype=np.uint8)
    out[:, 0] = np.where(rng.random(n) < 0.25, ord("1"), ord("0"))
    ints = np.minimum(np.expm1(rng.exponential(2.0, size=(n, INTEGERS))), 10**INT_DIGITS - 1).astype(np.int64)
    ints[rng.random((n, INTEGERS)) < 0.1] = 10**INT_DIGITS  # missing: the all-NUL row
    slots = out[:, 1 : 1 + INTEGERS * (1 + INT_DIGITS)].reshape(n, INTEGERS, 1 + INT_DIGITS)
    slots[:, :, 0] = ord("\t")
    slots[:, :, 1:] = decimal[ints]
    values, missing = _categoricals(rng, n, pool)
    start = 1 + INTEGERS * (1 + INT_DIGITS)
    slots = out[:, start : start + CATEGORICALS * 9].reshape(n, CATEGORICALS, 9)
    slots[:, :, 0] = ord("\t")
    slots[:, :, 1:5] = hexadecimal[values >> np.uint32(16)]
    slots[:, :, 5:] = hexadecimal[values & np.uint32(0xFFFF)]
    slots[missing, 1:] = 0
    out[:, -1] = ord("\n")
    flat = out.ravel()
    return flat[flat != 0].tobytes()


def expected_entries(rows: int, days: int) -> int:
    """Distinct (field, value) pairs of the training days' rows (the vocabularies at min count 1)."""
    train_rows = rows_per_day(rows, days)[: days - 2]
    n = sum(train_rows)
    pool = max(1000, rows // POOL_DIVISOR)
    pooled = pool * (1 - math.exp(-P_POOL * n / pool))
    return round(CATEGORICALS * (HOT + pooled + (1 - P_MISSING - P_HOT - P_POOL) * n))


def rows_per_day(rows: int, days: int) -> list[int]:
    return [rows // days + (1 if k < rows % days else 0) for k in range(days)]


def logs(workdir: Path, rows: int, days: int, seed: int = 0) -> Path:
    """Raw logs under ``workdir`` (reused when already there with the same parameters)."""
    raw = workdir / f"raw-{rows}x{days}-seed{seed}"
    params = {"rows": rows, "days": days, "seed": seed, "start": START.isoformat()}
    marker = raw / GENERATED
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return raw
    shutil.rmtree(raw, ignore_errors=True)
    began = time.perf_counter()
    pool, tables = max(1000, rows // POOL_DIVISOR), _digit_tables()
    for k, n in enumerate(rows_per_day(rows, days)):
        folder = raw / f"date={(START + dt.timedelta(days=k)).isoformat()}"
        folder.mkdir(parents=True)
        with open(folder / "part-00000.tsv", "wb") as f:
            for chunk, begin in enumerate(range(0, n, 200_000)):
                f.write(_lines(np.random.default_rng([seed, k, chunk]), min(200_000, n - begin), pool, tables))
    took = time.perf_counter() - began
    size = sum(p.stat().st_size for p in raw.rglob("*.tsv"))
    marker.write_text(json.dumps({"params": params, "bytes": size, "seconds": round(took, 1)}))
    print(f"generated {rows:,} rows ({size / MB:,.0f} MiB) in {took:.1f} s: {raw}", flush=True)
    return raw


# -- one mode, in a process of its own ---------------------------------------------------------


def _spark_conf(args: argparse.Namespace, gc_log: Path) -> dict[str, str]:
    from deepfm.cli.config import load_defaults, spark_conf

    conf = spark_conf(load_defaults("preprocess"))
    if args.driver_memory:
        conf["spark.driver.memory"] = args.driver_memory
    # The GC log is the driver JVM's own record of its heap (its path must hold no space).
    options = conf.get("spark.driver.extraJavaOptions", "")
    conf["spark.driver.extraJavaOptions"] = f"{options} -Xlog:gc:file={gc_log}".strip()
    return conf


def child_job(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Run the job once in ``args.child`` mode; fill ``result`` as it goes."""
    from deepfm.cli.config import load_defaults, load_schema
    from deepfm.ops.spark import get_spark
    from deepfm.prep import preprocess
    from deepfm.prep.encoding import FeatureConfig

    mode = args.child
    raw = Path(args.raw)
    out = args.workdir / f"out-{mode}"
    began = time.perf_counter()
    spark = get_spark(f"bench-vocab-scale-{mode}", _spark_conf(args, args.workdir / f"gc-{mode}.log"))
    jvm = spark._jvm
    assert jvm is not None
    result["jvm_pid"] = int(jvm.java.lang.ProcessHandle.current().pid())
    result["session_seconds"] = round(time.perf_counter() - began, 2)
    result["master"] = spark.sparkContext.master
    result["driver_memory"] = spark.sparkContext.getConf().get("spark.driver.memory", "")
    schema = load_schema("criteo")
    features = load_defaults("features")
    features["defaults"]["categorical"]["transform"] = mode
    features["defaults"]["categorical"]["min_count"] = args.min_count
    opts = preprocess.Options(
        input=str(raw),
        output=str(out),
        end_date=START + dt.timedelta(days=args.days - 1),
        features=FeatureConfig.from_dict(features, schema),
        train_days=args.days - 2,
        validation_days=1,
        test_days=1,
        day_cache=None,
    )
    stat, tick = Path(f"/proc/{result['jvm_pid']}/stat"), os.sysconf("SC_CLK_TCK")

    def cpu() -> float:  # the JVM's user + system seconds: steadier than wall time on a shared machine
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    began, cpu_began = time.perf_counter(), cpu()
    summary = preprocess.run(spark, opts)
    result["total_seconds"] = round(time.perf_counter() - began, 2)
    result["jvm_cpu_seconds"] = round(cpu() - cpu_began, 2)
    result["stage_seconds"] = {k: round(v, 3) for k, v in summary["stage_seconds"].items()}
    result["totals"] = summary["totals"]
    heap = jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage()
    result["jvm_heap_at_end_mb"] = round(heap.getUsed() / MB, 1)
    result["jvm_heap_max_mb"] = round(heap.getMax() / MB, 1)
    spark.stop()


def child_floor(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Time, in one Spark session, what an exact vocabulary job must do beyond the hash job, each
    part as cheaply as it can be done (the rows read without validation, no strings shuffled):
      - ``count``: count the training days' values per field, keyed by a 64-bit hash of each value
        (a job must count them to know its vocabularies; strings cost more, benchmarks/README.md);
      - ``pairs``: move every (row, field, value) key of every day once, to where its field's
        vocabulary entry lives (no broadcast: a vocabulary of millions does not fit one);
      - ``rows``: move every row once, to meet the indexes found for its values.
    Each pass ends in a no-op write and reads the logs itself; ``scan``, a pass that only reads them,
    is taken off each (a job could read them once for all), and what is left, summed, is
    ``total_seconds``: still a lower bound."""
    from pyspark.sql import functions as F

    from deepfm.cli.config import load_schema
    from deepfm.ops.spark import get_spark

    spark = get_spark("bench-vocab-scale-floor", _spark_conf(args, args.workdir / "gc-floor.log"))
    kinds = load_schema("criteo").feature_kinds
    integers = [n for n, k in kinds.items() if k == "integer"]
    categoricals = [n for n, k in kinds.items() if k == "categorical"]
    ddl = ", ".join(["label INT", *(f"{n} LONG" for n in integers), *(f"{n} STRING" for n in categoricals)])
    rows = spark.read.schema(ddl).option("sep", "\t").csv(args.raw)  # + `date`, from the folders
    last_training_day = (START + dt.timedelta(days=args.days - 3)).isoformat()
    row_key = F.xxhash64(*(F.col(c) for c in ["label", *integers, *categoricals]))

    def pairs(frame: Any, *keep: Any) -> Any:  # the present values only: xxhash64(null) is not null
        keys = [F.when(F.col(n).isNotNull(), F.xxhash64(n)) for n in categoricals]
        items = [F.struct(F.lit(i).alias("field"), key.alias("key")) for i, key in enumerate(keys)]
        return frame.select(*keep, F.inline(F.array(*items))).where(F.col("key").isNotNull())

    passes = {
        "scan": rows.select(*rows.columns),
        "count": pairs(rows.where(F.col("date") <= last_training_day)).groupBy("field", "key").count(),
        "pairs": pairs(rows, row_key.alias("row")).repartition("field", "key"),
        "rows": rows.repartition(row_key),
    }
    passes["scan"].write.mode("overwrite").format("noop").save()  # warms the JVM up: untimed
    seconds = {}
    for name, frame in passes.items():
        began = time.perf_counter()
        frame.write.mode("overwrite").format("noop").save()
        seconds[name] = round(time.perf_counter() - began, 2)
        print(f"floor pass {name}: {seconds[name]:.1f} s", flush=True)
    scan = seconds.pop("scan")
    result["scan_seconds"] = scan
    result["floor_seconds"] = {name: round(max(0.0, s - scan), 2) for name, s in seconds.items()}
    result["total_seconds"] = round(sum(result["floor_seconds"].values()), 2)
    spark.stop()


def child_bundle(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Save a tiny DeepFM bundle for the vocabulary mode's spec; fill ``result``."""
    from deepfm.cli.config import load_defaults
    from deepfm.core.features import FeatureSpec
    from deepfm.models import ModelDefaults, build_model_for_spec
    from deepfm.models.bundle import save_bundle

    began = time.perf_counter()
    spec = FeatureSpec.load(args.workdir / "out-vocab")
    result["spec_load_seconds"] = round(time.perf_counter() - began, 2)
    config = ModelDefaults(load_defaults("models")).resolve("deepfm", {"embedding_dim": 2, "hidden_units": [8]})
    model = build_model_for_spec("deepfm", spec, config)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    path = args.workdir / "bundle-vocab"
    shutil.rmtree(path, ignore_errors=True)
    began = time.perf_counter()
    save_bundle(path, model, spec)
    result["save_seconds"] = round(time.perf_counter() - began, 2)
    result["total_seconds"] = round(result["spec_load_seconds"] + result["save_seconds"], 2)
    result["bundle_bytes"] = tree_bytes(path)
    result["bundle_files"] = entry_bytes(path)


def error_line(text: str) -> str:
    """The line that says what went wrong: an OutOfMemoryError wherever it is, else the first line."""
    if found := re.search(r"java\.lang\.OutOfMemoryError: [^\n]*", text):
        return found.group(0).strip()
    for line in text.splitlines():
        if "OutOfMemoryError" in line:
            return line[line.find("java.lang.OutOfMemoryError") if "java.lang.Out" in line else 0 :].strip()[:300]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown error"


_STAGE = re.compile(r"^(\S+ \S+) INFO deepfm\.prep\.preprocess: stage (\w+): (?:started|done in ([\d.]+)s)", re.M)


def logged_stages(text: str, ended: dt.datetime) -> tuple[dict[str, float], dict[str, float]]:
    """From a child's log: the seconds of each finished stage, and the stage still running when the
    process ended, with its seconds until then (a job that failed or was killed returns no summary)."""
    done, started = {}, {}
    for when, stage, seconds in _STAGE.findall(text):
        if seconds:
            done[stage] = float(seconds)
        else:
            started[stage] = dt.datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f")
    running = {stage: round((ended - t).total_seconds(), 1) for stage, t in started.items() if stage not in done}
    return done, running


def child(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {"mode": args.child}
    path = args.workdir / f"result-{args.child}.json"
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("deepfm").setLevel(logging.INFO)  # the job's log (its stages), into this mode's log file
    try:
        {"bundle": child_bundle, "floor": child_floor}.get(args.child, child_job)(args, result)
    except BaseException as exc:  # any failure (an OutOfMemoryError too) is a figure of this benchmark
        traceback.print_exc()
        text = str(exc)
        java = getattr(exc, "java_exception", None)
        with contextlib.suppress(Exception):  # the JVM may be gone
            text = java.toString() + "\n" + text if java is not None else text
        result["error"] = f"{type(exc).__name__}: {error_line(text)}"
    path.write_text(json.dumps(result))
    return 1 if "error" in result else 0


# -- measurements from the parent --------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every process below ``pid``."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append((int(entry.name), name))
    found, todo = [], [pid]
    while todo:
        for kid in parents.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid[0])
    return found


class PeakRss:
    """Polls the peak resident set (VmHWM) of a child process and of the JVMs below it."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.python_kb = 0
        self.jvm_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            self.python_kb = max(self.python_kb, _status_kb(self.pid, "VmHWM") or 0)
            for pid, name in _descendants(self.pid):
                if name == "java":
                    self.jvm_kb[pid] = max(self.jvm_kb.get(pid, 0), _status_kb(pid, "VmHWM") or 0)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class OomWatch:
    """Whether a child's log has reported an OutOfMemoryError yet, and since when: after one in a
    thread of its own (a broadcast, the DAG scheduler), a driver JVM may never finish the job."""

    def __init__(self, log_path: Path) -> None:
        self.path, self.offset, self.seen_at = log_path, 0, 0.0

    def seen(self) -> bool:
        if not self.seen_at:
            start = max(0, self.offset - 32)  # a match may straddle two reads
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read()
            self.offset = start + len(data)
            if b"OutOfMemoryError" in data:
                self.seen_at = time.perf_counter()
        return bool(self.seen_at)


_GC_SIZES = re.compile(r"(\d+)([KMG])->(\d+)([KMG])\((\d+)([KMG])\)")
_UNIT_MB = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}


def gc_heap(path: Path) -> dict[str, Any]:
    """From a ``-Xlog:gc`` log: the largest heap occupancy before a collection (the peak, unless
    the heap grew higher after the last one), the largest after one (an upper bound of the live
    data), the largest heap committed, the number of pauses and their seconds."""
    before = after = committed = pause_ms = 0.0
    pauses = full = 0
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        sizes = _GC_SIZES.search(line)
        if not sizes:
            continue
        b, bu, a, au, c, cu = sizes.groups()
        before = max(before, float(b) * _UNIT_MB[bu])
        after = max(after, float(a) * _UNIT_MB[au])
        committed = max(committed, float(c) * _UNIT_MB[cu])
        if "Pause" in line:
            pauses += 1
            full += "Pause Full" in line
            took = re.search(r"([\d.]+)ms\s*$", line)
            pause_ms += float(took.group(1)) if took else 0.0
    return {
        "jvm_heap_peak_mb": round(before, 1),
        "jvm_heap_after_gc_peak_mb": round(after, 1),
        "jvm_heap_committed_peak_mb": round(committed, 1),
        "gc_pauses": pauses,
        "gc_full_pauses": full,
        "gc_pause_seconds": round(pause_ms / 1000, 2),
    }


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def entry_bytes(path: Path) -> dict[str, int]:
    """Bytes of each top-level entry of a folder."""
    return {p.name: tree_bytes(p) for p in sorted(path.iterdir())} if path.exists() else {}


_FIELD = re.compile(rb'\{"name":\s*"([^"]*)",\s*"transform":\s*"(\w+)",\s*"cardinality":\s*(\d+)')


def vocabulary_entries(spec_path: Path) -> tuple[int, int]:
    """(entries, fields) of the spec's vocabulary fields: a stored vocabulary's size, else cardinality
    minus index 0 (and any out-of-vocabulary buckets); a large spec (values inline: millions) is
    read without parsing its values."""
    data = spec_path.read_bytes() if spec_path.exists() else b""
    if len(data) < 50 * MB:
        fields = json.loads(data)["fields"] if data else []
        vocab = [f for f in fields if f["transform"] == "vocab"]
        sizes = [
            int(f["vocabulary_size"])
            if f.get("vocabulary_hash")
            else int(f["cardinality"]) - 1 - f.get("oov_buckets", 0)
            for f in vocab
        ]
        return sum(sizes), len(vocab)
    vocab = [int(c) for _, t, c in _FIELD.findall(data) if t == b"vocab"]
    return sum(c - 1 for c in vocab), len(vocab)


def run_child(args: argparse.Namespace, mode: str, raw: Path | None) -> dict[str, Any]:
    """Run one mode (or the bundle) in a process of its own, with its memory peaks."""
    result_path, log_path = args.workdir / f"result-{mode}.json", args.workdir / f"log-{mode}.txt"
    gc_log, out = args.workdir / f"gc-{mode}.log", args.workdir / f"out-{mode}"
    for path in (result_path, gc_log):
        path.unlink(missing_ok=True)
    if mode in JOB_MODES:
        shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--child", mode, "--workdir", str(args.workdir), "--days", str(args.days)]
    command += ["--min-count", str(args.min_count), "--raw", str(raw or "")]
    command += ["--driver-memory", args.driver_memory] if args.driver_memory else []
    began, killed = time.perf_counter(), ""
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        peaks, oom = PeakRss(process.pid), OomWatch(log_path)
        while True:
            try:
                rc = process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.perf_counter() - began >= args.timeout_minutes * 60:
                killed = f"timed out after {args.timeout_minutes:g} min"
            elif oom.seen() and time.perf_counter() - oom.seen_at >= args.oom_grace_minutes * 60:
                killed = f"the job was still running {args.oom_grace_minutes:g} min after it: killed"
            if killed:
                os.killpg(process.pid, signal.SIGKILL)  # the child's session: it and its JVM
                rc = process.wait()
                break
        peaks.stop()
    wall = time.perf_counter() - began
    result = json.loads(result_path.read_text()) if result_path.exists() else {"mode": mode}
    text = log_path.read_text(errors="replace")
    if killed:
        result["error"] = f"{error_line(text)} ({killed})" if "OutOfMemoryError" in text else killed
    elif "error" not in result and rc != 0:
        why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["(empty log)"]
        result["error"] = f"{why}{' (out of memory? see dmesg)' if rc == -9 else ''}; last log line: {last[0][:300]}"
    if "error" in result and "OutOfMemoryError" not in result["error"] and "OutOfMemoryError" in text:
        result["error"] += f" (the log reports {error_line(text)})"
    if "error" in result and mode in JOB_MODES:
        result["stage_seconds"], result["failed_in_stage"] = logged_stages(text, dt.datetime.now())
    result["process_seconds"] = round(wall, 1)
    result["python_rss_peak_mb"] = round(peaks.python_kb / 1024, 1)
    jvm_pid = int(result.get("jvm_pid", 0))
    jvm_kb = peaks.jvm_kb.get(jvm_pid, 0) if jvm_pid else max(peaks.jvm_kb.values(), default=0)
    if mode != "bundle":  # a Spark driver: its JVM's peaks
        result["jvm_rss_peak_mb"] = round(jvm_kb / 1024, 1)
        result.update(gc_heap(gc_log))
        result["jvm_heap_peak_mb"] = max(result["jvm_heap_peak_mb"], result.get("jvm_heap_at_end_mb", 0))
    if mode in JOB_MODES:
        result["spec_bytes"] = tree_bytes(out / "feature_spec.json")
        result["vocabularies_bytes"] = tree_bytes(out / "vocabularies")
        result["output_bytes"] = entry_bytes(out)
        result["vocabulary_entries"], result["vocabulary_fields"] = vocabulary_entries(out / "feature_spec.json")
    result["status"] = f"failed: {result['error']}" if "error" in result else "ok"
    return result


# -- report ------------------------------------------------------------------------------------


def _seconds(result: dict[str, Any], figure: str) -> float | None:
    """A finished mode's ``total``, ``jvm_cpu`` or stage seconds."""
    if "error" in result:
        return None
    if figure in ("total", "jvm_cpu"):
        return result[f"{figure}_seconds"]
    return result.get("stage_seconds", {}).get(figure)


def _stage_cell(result: dict[str, Any], stage: str) -> str:
    """A stage's seconds; ">N" for the stage a failed mode was in, N seconds when it ended."""
    if stage in result.get("stage_seconds", {}):
        return f"{result['stage_seconds'][stage]:.1f}"
    running = result.get("failed_in_stage", {})
    return f">{running[stage]:.0f}" if stage in running else "-"


def report(args: argparse.Namespace, raw: Path, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    generated = json.loads((raw / GENERATED).read_text())
    train = sum(rows_per_day(args.rows, args.days)[: args.days - 2])
    print(
        f"\n{args.rows:,} rows over {args.days} days ({train:,} training rows, {generated['bytes'] / MB:,.0f} MiB "
        f"of raw logs), min count {args.min_count}, driver memory {args.driver_memory or 'the default (4g)'}, "
        f"{os.cpu_count()} cores; {expected_entries(args.rows, args.days):,} vocabulary entries expected at min "
        "count 1. Each mode in its own process and driver JVM (local mode: the driver is the only executor)."
    )
    stages = ("validate", "fit", "encode", "finalize")
    print(
        f"{'mode':<7}{'total s':>9}{'cpu s':>8}" + "".join(f"{s + ' s':>11}" for s in stages)
        + f"{'spec MiB':>10}{'vocab MiB':>11}{'entries':>13}{'heap MiB':>10}{'after GC':>10}"
        f"{'JVM RSS':>9}{'py RSS':>8}   result"
    )  # fmt: skip
    for mode, r in results.items():
        if mode not in JOB_MODES:
            continue
        cells = [f"{r[k]:.1f}" if k in r else "-" for k in ("total_seconds", "jvm_cpu_seconds")]
        cells += [_stage_cell(r, s) for s in stages]
        print(
            f"{mode:<7}{cells[0]:>9}{cells[1]:>8}" + "".join(f"{c:>11}" for c in cells[2:])
            + f"{r['spec_bytes'] / MB:>10.1f}{r['vocabularies_bytes'] / MB:>11.1f}{r['vocabulary_entries']:>13,}"
            f"{r['jvm_heap_peak_mb']:>10,.0f}{r['jvm_heap_after_gc_peak_mb']:>10,.0f}{r['jvm_rss_peak_mb']:>9,.0f}"
            f"{r['python_rss_peak_mb']:>8,.0f}   {r['status']}"
        )  # fmt: skip
    figures: dict[str, Any] = {
        "rows": args.rows,
        "days": args.days,
        "training_rows": train,
        "raw_bytes": generated["bytes"],
        "min_count": args.min_count,
        "driver_memory": args.driver_memory or "default",
        "cores": os.cpu_count(),
        "expected_vocabulary_entries": expected_entries(args.rows, args.days),
        **results,
    }
    vocab, hashed = results.get("vocab"), results.get("hash")
    if vocab is not None:
        ok = "error" not in vocab
        memory = args.driver_memory or "the default 4g"
        print(f"target: the vocabulary job completes with {memory} of driver memory: {'met' if ok else 'NOT met'}")
        figures["target_completes"] = ok
    if vocab is not None and hashed is not None:
        ratios = {}
        for figure in ("total", "jvm_cpu", "fit", "encode"):
            v, h = _seconds(vocab, figure), _seconds(hashed, figure)
            ratios[figure] = round(v / h, 3) if v is not None and h else None
        shown = ", ".join(f"{k} {v:.2f}x" if v is not None else f"{k} -" for k, v in ratios.items())
        total = ratios["total"]
        verdict = "not measured" if total is None else "met" if total <= 2 else "NOT met"
        print(f"vocabulary / hash: {shown}; target total <= 2x: {verdict}")
        print("(each mode ran once, at a different time: on a busy machine the JVM CPU ratio is the steadier one)")
        figures["ratios_vocab_to_hash"] = ratios
    if (floor := results.get("floor")) is not None:
        figures["floor"] = floor_report(floor, hashed)
    if args.bundle and "bundle" not in results:
        print("bundle: skipped (no vocabulary spec: the vocabulary mode failed or did not run)")
    if "bundle" in results:
        b = results["bundle"]
        if "error" in b:
            print(f"bundle: {b['status']}")
        else:
            print(
                f"bundle (deepfm, embedding_dim 2, hidden [8]): {b['bundle_bytes'] / MB:,.1f} MiB "
                f"({', '.join(f'{k} {v / MB:,.1f} MiB' for k, v in b['bundle_files'].items())}), "
                f"{b['parameters']:,} parameters; spec loaded in {b['spec_load_seconds']:.1f} s, saved in "
                f"{b['save_seconds']:.1f} s; Python peak RSS {b['python_rss_peak_mb']:,.0f} MiB"
            )
    return figures


def floor_report(floor: dict[str, Any], hashed: dict[str, Any] | None) -> dict[str, Any]:
    """Print the floor passes and, with the hash job's total, the lowest vocabulary / hash ratio
    that an exact vocabulary job which counts, then looks up, could reach on this machine."""
    if "error" in floor:
        print(f"floor: {floor['status']}")
        return {}
    parts = floor["floor_seconds"]
    print(
        "floor (what an exact vocabulary job adds to the hash job, each part as cheap as it can be): "
        f"count the training values by 64-bit key {parts['count']:.1f} s, move every value to its "
        f"vocabulary entry {parts['pairs']:.1f} s, move every row to its indexes {parts['rows']:.1f} s "
        f"(each without its reading of the logs, {floor['scan_seconds']:.1f} s)"
    )
    hash_total = _seconds(hashed, "total") if hashed is not None else None
    if not hash_total:
        print("(no hash job measured: no floor ratio)")
        return {"seconds": parts}
    least = (hash_total + floor["total_seconds"]) / hash_total
    reachable = "within it" if least <= 2 else "NOT within it on this machine"
    print(f"lowest vocabulary / hash ratio of a job that counts, then looks up: {least:.2f}x (the hash job's "
          f"{hash_total:.1f} s plus these): the <= 2x target is {reachable}")  # fmt: skip
    return {"seconds": parts, "least_ratio": round(least, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=4_800_000,
        help="rows of the logs, spread evenly over the days (default %(default)s: ~56M vocabulary entries)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=4,
        help="days of the logs and of the window: training days, then a validation and a test day (default 4)",
    )
    parser.add_argument(
        "--min-count", type=int, default=1, help="vocabulary mode: values seen at least this often (default 1: all)"
    )
    parser.add_argument("--driver-memory", default="", help="spark.driver.memory (default: the job's, 4g)")
    parser.add_argument("--modes", default=",".join(MODES), help="modes to run, in order (default %(default)s)")
    parser.add_argument("--bundle", action="store_true", help="also save a tiny DeepFM bundle for the vocab spec")
    parser.add_argument(
        "--timeout-minutes", type=float, default=180, help="a mode still running then is killed (default 180)"
    )
    parser.add_argument(
        "--oom-grace-minutes",
        type=float,
        default=3,
        help="a mode still running this long after its log reported an OutOfMemoryError is killed (default 3)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "deepfm-bench-vocab",
        help="logs, outputs, and each mode's log, GC log and result (default %(default)s; no spaces)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one mode, in its own process
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    if args.child:
        return child(args)
    if args.days < 3:
        parser.error("--days must be >= 3 (training days, a validation day and a test day)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    if " " in str(args.workdir):
        parser.error("the work directory's path holds a space (the driver's GC log goes there)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw = logs(args.workdir, args.rows, args.days)
    results = {}
    for mode in modes:
        print(f"running {mode} (log: {args.workdir / f'log-{mode}.txt'})", flush=True)
        results[mode] = run_child(args, mode, raw)
        print(f"{mode}: {results[mode]['status']}, {results[mode]['process_seconds']:.0f} s", flush=True)
    if args.bundle and results.get("vocab", {}).get("status") == "ok":
        print("saving a bundle for the vocabulary spec", flush=True)
        results["bundle"] = run_child(args, "bundle", raw)
    figures = report(args, raw, results)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
