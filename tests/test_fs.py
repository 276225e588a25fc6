"""The one atomic-write mechanism, orphans of killed writers, first-writer-wins entries, and the
run lock (fast: local files and small subprocesses only)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from deepfm.core import fs
from deepfm.ops.locks import Locked, exclusive

HOLD = "import sys, time; from pathlib import Path; from deepfm.ops.locks import exclusive\n"
HOLD += "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"


def test_a_folder_is_swapped_in_whole_and_a_failed_one_leaves_the_old(tmp_path):
    target = tmp_path / "out"
    with fs.staged_dir(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError), fs.staged_dir(target) as staging:
        (staging / "a").write_text("2")
        raise RuntimeError("half-written")
    assert (target / "a").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert stat.S_IMODE(target.stat().st_mode) == fs.DIR_MODE
    fs.write_json(tmp_path / "x.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == fs.FILE_MODE  # never mkstemp's 0600


def test_temporaries_of_killed_writers_are_swept_and_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = target.with_name(f".out.tmp-{fs.HOST}-{dead.stdout.strip()}-0123abcd")
    alive = target.with_name(f".out.tmp-{fs.HOST}-{child.pid}-0123abcd")
    other_host = target.with_name(".out.tmp-elsewhere-1-0123abcd")
    for folder in (orphan, alive, other_host):
        folder.mkdir()
    try:
        with fs.staged_dir(target) as staging:
            (staging / "a").write_text("1")
        assert not orphan.exists() and alive.exists() and other_host.exists()
    finally:
        child.kill()
        child.wait()


def test_the_first_writer_of_an_entry_wins_and_the_second_keeps_quiet(tmp_path):
    """``publish_once`` (any URI: here a ``file://`` one): a failed writer leaves nothing, the first
    complete one is named by the commit marker, a later one's folder is dropped."""
    entry = (tmp_path / "entry").as_uri()

    def write(value: str) -> Callable[[str], None]:
        def fill(folder: str) -> None:
            fs.put_text(fs.join(folder, "v"), value)
            if value == "fail":
                raise RuntimeError("a failed writer")

        return fill

    with pytest.raises(RuntimeError):
        fs.publish_once(entry, write("fail"))
    assert fs.committed(entry) is None and fs.listdir(entry) == []
    first = fs.publish_once(entry, write("1"))
    assert fs.publish_once(entry, write("2")) == first == fs.committed(entry)
    assert fs.read_text(fs.join(first, "v")) == "1" and fs.listdir(entry) == sorted([fs.name(first), fs.COMMIT_MARKER])


def test_a_lock_is_refused_naming_its_holder_and_freed_when_the_holder_dies(tmp_path):
    lock = tmp_path / "locks" / "d.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        with pytest.raises(Locked, match=rf"held by another run \(host .*, pid {holder.pid}, started"), exclusive(lock):
            pass
        os.kill(holder.pid, signal.SIGKILL)  # a holder that dies without unlocking
        holder.wait()
        time.sleep(0.1)
        with exclusive(lock) as record:
            assert record["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_uris_name_local_paths_and_object_stores_alike(tmp_path):
    assert fs.is_local(tmp_path) and fs.is_local(f"file://{tmp_path}") and not fs.is_local("s3a://b/k")
    assert fs.local_path(f"file://{tmp_path}/a") == tmp_path / "a"
    assert fs.hadoop_uri("s3://b/k/day=1") == "s3a://b/k/day=1" and fs.hadoop_uri("gs://b/k") == "gs://b/k"
    assert fs.hadoop_uri(tmp_path / "day=1") == f"file://{tmp_path}/day=1"  # '=' unescaped, as Hadoop wants
    assert fs.join("s3a://b/k/", "x", "y") == "s3a://b/k/x/y" and fs.parent("s3a://b/k/x") == "s3a://b/k"
    assert fs.arrow("s3a://b/k/x")[1] == "b/k/x"
    settings = fs.S3Settings.from_hadoop({"spark.hadoop.fs.s3a.endpoint": "http://h:1",
                                          "spark.hadoop.fs.s3a.connection.ssl.enabled": "false"})  # fmt: skip
    assert settings == fs.S3Settings(endpoint="http://h:1", ssl=False, region=None)


def test_a_staged_uri_replaces_a_local_folder_whole_and_copies_trees(tmp_path):
    target = str(tmp_path / "out")
    with fs.staged_uri(target) as staging:
        fs.put_text(fs.join(staging, "a", "b.txt"), "1")
    with pytest.raises(RuntimeError), fs.staged_uri(target) as staging:
        fs.put_text(fs.join(staging, "c.txt"), "2")
        raise RuntimeError("half-written")
    assert fs.files_under(target) == [f"{target}/a/b.txt"] and fs.read_text(f"{target}/a/b.txt") == "1"
    fs.copy_tree(target, tmp_path / "copy")
    assert fs.read_text(tmp_path / "copy" / "a" / "b.txt") == "1" and fs.file_size(f"{target}/a/b.txt") == 1
    fs.remove_tree(target)
    assert not fs.exists(target) and [p.name for p in tmp_path.iterdir()] == ["copy"]


def test_a_streamed_file_replaces_its_target_only_when_written_whole_and_files_move(tmp_path):
    target = f"file://{tmp_path}/a/f.bin"
    fs.put_stream(target, lambda stream: stream.write(b"old"))

    def half(stream) -> None:
        stream.write(b"ne")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        fs.put_stream(target, half)
    assert fs.read_text(target) == "old" and [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]
    fs.move(target, tmp_path / "b" / "g.bin")
    assert not fs.exists(target) and (tmp_path / "b" / "g.bin").read_bytes() == b"old"
