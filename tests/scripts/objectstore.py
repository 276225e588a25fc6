"""A real S3 server for the object-store tests: SeaweedFS (``make setup-test`` builds it).

``seaweedfs(root)`` starts ``weed server`` (master, volume, filer and S3 gateway in one process)
on free local ports with its data under ``root``, waits until its S3 API answers, and stops it on
exit. Both Spark's S3A and pyarrow reach it through the settings ``S3Store.spark_conf`` gives.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from testkit import daemon

from deepfm.core import fs
from deepfm.ops.doctor import seaweedfs_binary

# SeaweedFS without an identity configuration accepts any credentials; S3A and Arrow still sign.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "deepfm", "AWS_SECRET_ACCESS_KEY": "deepfm-secret", "AWS_REGION": "us-east-1"}
# Where both read them (S3A's default provider chain, Arrow's): this process and its subprocesses.
os.environ.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})


@dataclass(frozen=True)
class S3Store:
    endpoint: str  # host:port
    bucket: str

    def uri(self, *parts: str) -> str:
        """An ``s3a://`` URI in the bucket."""
        return fs.join(f"s3a://{self.bucket}", *parts)

    @property
    def spark_conf(self) -> dict[str, str]:
        """The S3A settings a job needs (``deepfm/conf/spark.yaml`` documents them)."""
        return {
            "spark.hadoop.fs.s3a.endpoint": f"http://{self.endpoint}",
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            "spark.hadoop.fs.s3a.endpoint.region": CREDENTIALS["AWS_REGION"],
        }

    @property
    def settings(self) -> fs.S3Settings:
        return fs.S3Settings.from_hadoop(self.spark_conf)


def free_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port for it) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000:
            with socket.socket() as s, suppress(OSError):
                s.bind(("127.0.0.1", port + 10000))
                return port


@contextmanager
def seaweedfs(root: Path, bucket: str = "ctr") -> Iterator[S3Store]:
    """A running SeaweedFS S3 server with an empty ``bucket``; its log is ``root/weed.log``."""
    weed = seaweedfs_binary()
    if not weed.is_file():
        raise FileNotFoundError(f"SeaweedFS not built at {weed}: run `make setup-test`")
    master, volume, filer, s3 = (free_port() for _ in range(4))
    data = root / "weed"
    data.mkdir(parents=True, exist_ok=True)
    command = [
        str(weed), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        "-s3", f"-s3.port={s3}", "-master.volumeSizeLimitMB=64", "-volume.max=20",
    ]  # fmt: skip
    store = S3Store(f"127.0.0.1:{s3}", bucket)
    with daemon(command, root / "weed.log") as server:
        _create_bucket(store, server, root / "weed.log")
        yield store


def _create_bucket(store: S3Store, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Create the bucket once the S3 API answers (the gateway waits for the filer and master)."""
    s3 = pafs.S3FileSystem(
        endpoint_override=store.endpoint, scheme="http", region=CREDENTIALS["AWS_REGION"], allow_bucket_creation=True
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            s3.create_dir(store.bucket)
            s3.get_file_info(pafs.FileSelector(store.bucket))
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS did not serve S3 at {store.endpoint}: {log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.5)
