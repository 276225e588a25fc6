"""A real Spark standalone cluster for the cluster test: a master and workers started from the
pip package's own launcher (``$SPARK_HOME/bin/spark-class``), each a process with its work
directory under ``root``, so executors run in folders that are not the checkout.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyspark
from objectstore import free_port
from testkit import REPO, VENV_BIN, daemon

from deepfm.cli.config import spark_conf
from deepfm.ops.spark import spark_submit_args

SPARK_HOME = Path(pyspark.__file__).parent


@contextmanager
def standalone(root: Path, workers: int = 2, cores: int = 1, memory: str = "2g") -> Iterator[str]:
    """A running master with ``workers`` registered workers; yields the master URL."""
    # The daemons' environment: this virtualenv's Java/Spark, nothing pointing at the checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"SPARK_HOME": str(SPARK_HOME)}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    with ExitStack() as stack:
        master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                  "--webui-port", str(ui)]  # fmt: skip
        stack.enter_context(daemon([spark_class, *master], root / "master.log", root, env))
        for i in range(workers):
            work = root / f"worker{i}"
            work.mkdir()
            worker = ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
                      "--memory", memory, "--work-dir", str(work), "--webui-port", str(free_port()), url]  # fmt: skip
            stack.enter_context(daemon([spark_class, *worker], root / f"worker{i}.log", work, env))
        _await_workers(ui, workers, root)
        yield url


def _await_workers(ui: int, count: int, root: Path, timeout: float = 120) -> None:
    """Wait until the master's status page lists ``count`` alive workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as page:
                if json.load(page).get("aliveworkers", 0) >= count:
                    return
        except OSError:
            pass
        time.sleep(1)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted(root.glob("*.log")))
    raise RuntimeError(f"the standalone cluster did not get {count} workers:\n{logs}")


def submit_command(master: str, py_files: Path, conf: Mapping[str, str], job: str, *args: str) -> list[str]:
    """``spark-submit --master MASTER --py-files PY_FILES --conf K=V... $(deepfm submit-args)
    jobs/JOB.py ARGS`` with this virtualenv's spark-submit; the driver on 127.0.0.1."""
    settings = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1", **conf}
    options = [a for k, v in settings.items() for a in ("--conf", f"{k}={v}")]
    return [str(VENV_BIN / "spark-submit"), "--master", master, "--py-files", str(py_files), *options,
            *spark_submit_args(spark_conf({})), str(REPO / "jobs" / f"{job}.py"), *args]  # fmt: skip
