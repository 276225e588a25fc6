"""The one module through which Python code reaches files: local paths or URIs of object stores.

Every path a job takes may be a plain path, a ``file://`` URI or a URI of a file system Arrow
reaches (``s3://``/``s3a://``, ``gs://``, ``hdfs://``, ``abfss://``): :func:`arrow` gives the
``pyarrow.fs`` file system and path of a URI, :func:`hadoop_uri` the URI Spark's Hadoop file
systems take (``s3a://`` for S3). S3's endpoint, addressing and TLS come from the same Hadoop keys
Spark's S3A reads (``fs.s3a.endpoint`` ...; :class:`S3Settings`), set once per process at an entry
point (:func:`use_s3`); credentials from the standard ``AWS_*`` variables both read.

It is also the one mechanism that writes files and folders so that readers never see them
half-written.

A file is written to a hidden temporary sibling and renamed over its target (a rename within a
folder is atomic). A folder is built in a staging sibling and swapped in by two renames: the old
folder stays whole until the new one is in place, and is then removed. A reader sees the old
version or the new one; the target is absent only between the two renames of a replacement.
``publish_once`` is the first-writer-wins variant for content-addressed entries (the day cache),
on any URI: two runs that computed the same entry keep one, and neither fails.

Temporary names carry this host and process id (``.<name>.tmp-<host>-<pid>-<id>``): what a killed
process left behind is removed by the next writer of the same target on the same host (on an
object store too), and a live process's temporaries are never touched.

Files and folders get the permissions the process umask gives (``tempfile.mkstemp`` and
``mkdtemp`` would create them 0600 / 0700, hiding them from another account such as scoring's).

On an object store a file's upload is atomic by itself (:func:`put_stream` uploads a file only
once it is written whole), but a folder cannot be renamed:
:func:`staged_uri` copies the staged folder over its target (server-side copies), data files
first and the top-level files (a job's spec and summary) last, so a reader that waits for the
summary sees complete data; between the delete of the old folder and the last copy, the target is
incomplete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

PathLike = str | os.PathLike[str]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK
HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40]


def _sibling(path: Path, tag: str) -> Path:
    """A hidden name next to ``path`` owned by this process (readers such as Spark skip ``.`` names)."""
    return path.with_name(f".{path.name}.{tag}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_orphans(target: PathLike) -> list[str]:
    """Remove the temporaries of ``target`` (any URI) that processes of this host no longer running
    left behind (a killed write); returns what was removed."""
    target = absolute(target)
    pattern = re.compile(rf"^\.{re.escape(name(target))}\.(?:tmp|old)-{HOST}-(\d+)-[0-9a-f]{{8}}$")
    filesystem, folder = arrow(parent(target))
    removed = []
    for entry in filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        match = pattern.match(entry.base_name)
        if match and not _alive(int(match.group(1))):
            if entry.type == pafs.FileType.Directory:
                filesystem.delete_dir(entry.path)
            else:
                filesystem.delete_file(entry.path)
            removed.append(join(parent(target), entry.base_name))
    return removed


def write_atomic(path: PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary sibling, then rename it over ``path``; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(path)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Replace ``path``'s content with ``text`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Replace ``path``'s content with ``payload`` as JSON atomically."""
    return write_text(path, json.dumps(payload, indent=indent))


def replace_dir(source: PathLike, target: PathLike) -> Path:
    """Move the complete folder ``source`` to ``target``, replacing any folder there whole."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(source, target)
        return target
    retired = _sibling(target, "old")
    os.replace(target, retired)
    os.replace(source, target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


@contextmanager
def staged_dir(target: PathLike) -> Iterator[Path]:
    """A new, empty staging folder next to ``target``, swapped in over ``target`` when the block
    succeeds (``replace_dir``) and removed when it raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(target)
    staging = _sibling(target, "tmp")
    staging.mkdir(mode=DIR_MODE)
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- URIs: local paths and object stores -------------------------------------------------------

S3_SCHEMES = ("s3", "s3a", "s3n")


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3 (or an S3-compatible store): Hadoop S3A's own settings, read here too."""

    endpoint: str | None = None  # host[:port] or URL; None: AWS's
    ssl: bool = True
    region: str | None = None

    @classmethod
    def from_hadoop(cls, settings: Mapping[str, str] | Iterable[tuple[str, str]]) -> S3Settings:
        """From Spark settings (``spark.hadoop.fs.s3a.*``; e.g. a session's
        ``sparkContext.getConf().getAll()``, for the driver and, passed along, the executors) or a
        Hadoop configuration (``fs.s3a.*``)."""
        conf = dict(settings)
        return cls.from_configuration(lambda key: conf.get(f"spark.hadoop.{key}", conf.get(key)))

    @classmethod
    def from_configuration(cls, get: Callable[[str], str | None]) -> S3Settings:
        """From a lookup of Hadoop keys (``fs.s3a.endpoint`` ...): a Spark session's Hadoop
        configuration's ``get``, what S3A itself reads (``spark.hadoop.*`` settings,
        ``core-site.xml``, values set at run time)."""
        ssl = (get("fs.s3a.connection.ssl.enabled") or "true").lower() == "true"
        return cls(endpoint=get("fs.s3a.endpoint") or None, ssl=ssl, region=get("fs.s3a.endpoint.region") or None)


_s3 = S3Settings()


def use_s3(settings: S3Settings) -> None:
    """Set this process's S3 settings (an entry point does, from the job's Spark settings)."""
    global _s3
    _s3 = settings


def is_local(uri: PathLike) -> bool:
    """Whether ``uri`` is a plain path or a ``file:`` URI."""
    return urlsplit(str(uri)).scheme in ("", "file")


def local_path(uri: PathLike) -> Path:
    """The path of a local ``uri`` (a plain path or ``file:`` URI)."""
    text = str(uri)
    return Path(urlsplit(text).path if text.startswith("file:") else text)


def absolute(uri: PathLike) -> str:
    """``uri`` with a local path made absolute (for processes with another working directory)."""
    return str(local_path(uri).resolve()) if is_local(uri) else str(uri)


def join(uri: PathLike, *parts: str) -> str:
    """``uri`` with ``parts`` appended (``/``-separated, as every file system here takes)."""
    return "/".join([str(uri).rstrip("/"), *parts])


def parent(uri: PathLike) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[0]


def name(uri: PathLike) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def hadoop_uri(uri: PathLike) -> str:
    """The URI Spark's Hadoop file systems take: an absolute ``file://`` URI for a local path
    (unescaped: Hadoop does not unescape the ``=`` of partition folders), ``s3a://`` for S3."""
    if is_local(uri):
        return f"file://{local_path(uri).resolve()}"
    parts = urlsplit(str(uri))
    return f"s3a://{parts.netloc}{parts.path}" if parts.scheme in S3_SCHEMES else str(uri)


def arrow(uri: PathLike) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow.fs`` file system holding ``uri``, and the path within it."""
    if is_local(uri):
        return pafs.LocalFileSystem(), str(local_path(uri).resolve())
    parts = urlsplit(str(uri))
    if parts.scheme in S3_SCHEMES:
        endpoint = urlsplit(_s3.endpoint if "://" in (_s3.endpoint or "") else f"//{_s3.endpoint}")
        s3 = pafs.S3FileSystem(
            endpoint_override=endpoint.netloc or None,
            scheme=endpoint.scheme or ("https" if _s3.ssl else "http"),
            region=_s3.region,
        )
        return s3, f"{parts.netloc}{parts.path}".rstrip("/")
    filesystem, path = pafs.FileSystem.from_uri(str(uri))
    return filesystem, path


def exists(uri: PathLike) -> bool:
    filesystem, path = arrow(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: PathLike) -> bool:
    filesystem, path = arrow(uri)
    return filesystem.get_file_info(path).type == pafs.FileType.Directory


def read_text(uri: PathLike) -> str:
    filesystem, path = arrow(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def read_json(uri: PathLike) -> Any:
    return json.loads(read_text(uri))


def listdir(uri: PathLike) -> list[str]:
    """The names in folder ``uri`` (none when absent), sorted."""
    filesystem, path = arrow(uri)
    return sorted(i.base_name for i in filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def sizes_under(uri: PathLike) -> dict[str, int]:
    """The size of each file under folder ``uri`` (recursively; none when absent), by its path
    relative to ``uri``."""
    filesystem, path = arrow(uri)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path[len(path) + 1 :]: int(i.size) for i in infos if i.type == pafs.FileType.File}


def files_under(uri: PathLike) -> list[str]:
    """The URIs of the files under folder ``uri`` (recursively, sorted)."""
    return sorted(join(uri, relative) for relative in sizes_under(uri))


def file_size(uri: PathLike) -> int:
    filesystem, path = arrow(uri)
    return int(filesystem.get_file_info(path).size)


def open_input(uri: PathLike) -> pa.NativeFile:
    """``uri`` opened for random-access reading (a Parquet footer, then its row groups)."""
    filesystem, path = arrow(uri)
    return filesystem.open_input_file(path)


def remove_tree(uri: PathLike) -> None:
    """Remove folder ``uri`` and everything under it (nothing when absent)."""
    if is_local(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    filesystem, path = arrow(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        # A folder whose objects were all removed may still be listed (SeaweedFS's filer keeps it),
        # and Arrow then finds nothing to delete.
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_dir(path)


def put_stream(uri: PathLike, write: Callable[[BinaryIO], object]) -> str:
    """Replace ``uri``'s content with what ``write`` writes to the binary stream it is given (such
    as ``torch.save``): atomically where local (``write_atomic``); on an object store the bytes are
    uploaded once ``write`` returned, as one upload (atomic by itself). They are held in memory
    until then: Arrow's output streams cannot abort, and closing one on an exception would publish
    the part written so far. Returns ``uri``."""
    if is_local(uri):

        def write_file(tmp: Path) -> None:
            with open(tmp, "wb") as stream:
                write(stream)

        write_atomic(local_path(uri), write_file)
        return str(uri)
    buffer = io.BytesIO()
    write(buffer)
    filesystem, path = arrow(uri)
    with filesystem.open_output_stream(path) as stream:
        stream.write(buffer.getbuffer())
    return str(uri)


def put_text(uri: PathLike, text: str) -> str:
    """Replace ``uri``'s content with ``text`` (``put_stream``)."""
    return put_stream(uri, lambda stream: stream.write(text.encode()))


def put_json(uri: PathLike, payload: Any, indent: int | None = 2) -> str:
    return put_text(uri, json.dumps(payload, indent=indent))


def move(source: PathLike, target: PathLike) -> None:
    """Move file or folder ``source`` to ``target`` (absent): a rename where local, server-side
    copies and a delete on an object store (no renames there)."""
    if is_local(source):
        local_path(target).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_path(source), local_path(target))
        return
    if is_dir(source):
        copy_tree(source, target)
        remove_tree(source)
    else:
        copy_file(source, target)
        filesystem, path = arrow(source)
        filesystem.delete_file(path)


def copy_file(source: PathLike, target: PathLike) -> None:
    """Copy file ``source`` to ``target``, on the same file system (server-side on an object
    store) or across two."""
    (src_fs, src), (dst_fs, dst) = arrow(source), arrow(target)
    if isinstance(dst_fs, pafs.LocalFileSystem):  # object stores have no folders to make
        dst_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    if src_fs.equals(dst_fs):
        dst_fs.copy_file(src, dst)
    else:
        pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


def copy_tree(source: PathLike, target: PathLike) -> None:
    """Copy every file under folder ``source`` to the same place under ``target`` (``copy_file``).
    Deepest files first, so the top-level files (a job's spec and summary, the last it writes)
    appear last."""
    base = str(source).rstrip("/")
    for file in sorted(files_under(source), key=lambda f: (-f.count("/"), f)):
        copy_file(file, join(target, file[len(base) + 1 :]))


@contextmanager
def staged_uri(target: PathLike) -> Iterator[str]:
    """``staged_dir`` for any URI: a new staging folder next to ``target`` (hidden from readers),
    put in place when the block succeeds and removed when it raises. Locally swapped in by
    renames; on an object store copied over ``target`` (see the module's docstring)."""
    if is_local(target):
        with staged_dir(local_path(target)) as local:
            yield str(local)
        return
    sweep_orphans(target)
    staging = _temporary(target)
    try:
        yield staging
        remove_tree(target)
        copy_tree(staging, target)
    finally:
        remove_tree(staging)


def _temporary(target: PathLike) -> str:
    """A hidden name next to ``target`` (any URI) owned by this process (``sweep_orphans``)."""
    return join(parent(target), f".{name(target)}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def scratch_dir(folder: PathLike) -> str:
    """A new folder path under ``folder`` (any URI; hidden from readers, owned by this process) for
    a writer such as Spark to fill; orphans of killed processes there are removed first."""
    scratch = join(absolute(folder), "scratch")
    sweep_orphans(scratch)
    return _temporary(scratch)


COMMIT_MARKER = "_committed.json"


def committed(target: PathLike) -> str | None:
    """The folder ``publish_once`` committed at ``target``, or None."""
    marker = join(target, COMMIT_MARKER)
    return join(target, read_json(marker)["folder"]) if exists(marker) else None


def publish_once(target: PathLike, write: Callable[[str], object]) -> str:
    """First writer wins, on any URI, for a folder of content-addressed data (writers that compute
    it compute the same: the day cache). ``write(folder)`` fills a new folder of this process's
    under ``target``; a marker file (``_committed.json``, written whole) then names it, unless a
    concurrent writer's was named first (this one's is then removed). Returns the named folder,
    which readers find with ``committed``. A marker because an object store has no rename that
    fails on an existing target: two writers finishing at the same moment may both write it, each
    naming a complete folder, and the one left unnamed stays until ``target`` is removed."""
    if (done := committed(target)) is not None:
        return done
    folder = join(target, f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(folder)
    except BaseException:
        remove_tree(folder)
        raise
    if (done := committed(target)) is not None:
        remove_tree(folder)
        return done
    put_json(join(target, COMMIT_MARKER), {"folder": name(folder)})
    return str(committed(target))
