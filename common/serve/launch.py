"""Starting ``defectfm serve`` as a child process on a free loopback port, for tests, the load test and scripts.

::

    with launch(["--ckpt_path", "last.ckpt"], Path("runs/serve_try")) as server:
        requests.post(server.url + "/predict", files={"image": open("a.png", "rb")})
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``defectfm serve``: its URL, process, log file and record folder."""

    url: str
    process: subprocess.Popen
    log: Path
    record_dir: Path

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` lines of the server's output."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.is_file() else ""

    def pids(self) -> list[int]:
        """The server process and every process it started (the API server and the model worker)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        """Resident memory of the server and its children together."""
        import psutil

        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def stop(self) -> None:
        """Stops the server and its children (SIGTERM to its process group, SIGKILL after 20 s)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch(args: Sequence[str], folder: Path, startup_s: float = 300.0, threads: int = 1) -> Server:
    """Starts ``defectfm serve ARGS --port FREE --record_dir FOLDER/record`` and waits for ``/health`` = ``ok``.

    Args:
        args: Further ``defectfm serve`` options (``--ckpt_path`` ...).
        folder: Where the record folder and ``serve.log`` go.
        startup_s: How long to wait for the model to load.
        threads: ``OMP_NUM_THREADS`` of the server (torch's intra-op threads).

    Raises:
        RuntimeError: The server exited or did not become healthy in time (with its last log lines).
    """
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    record, log = folder / "record", folder / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "common.cli", "serve", "--port", str(port), "--record_dir", str(record), *args]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log, record)
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"defectfm serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(server.url + "/health", timeout=2).text == "ok":
                return server
        except requests.RequestException:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"defectfm serve not healthy after {startup_s} s:\n{server.log_tail()}")
