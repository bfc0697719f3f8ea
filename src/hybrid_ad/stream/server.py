"""A private `redis-server` on a free local port, for the tests, the demo and the benchmark.

It never touches a shared server: its own port, its own directory, no persistence, and it is
shut down (and waited for) on exit.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hybrid_ad.stream.connection import StreamError

REDIS_SERVER = "/usr/bin/redis-server"


def find_redis_server() -> str:
    """The redis-server binary: /usr/bin/redis-server, else the one on PATH."""
    if Path(REDIS_SERVER).exists():
        return REDIS_SERVER
    found = shutil.which("redis-server")
    if found is None:
        raise StreamError("redis-server is not installed (Debian: apt-get install redis-server)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def private_redis(directory: Path, timeout: float = 10.0) -> Iterator[str]:
    """Start redis-server in `directory` on a free port; yield its URL; stop it on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        find_redis_server(),
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "no", "--protected-mode", "yes",
    ]  # fmt: skip
    log = open(directory / "redis.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_ready(port, process, timeout, directory / "redis.log")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(port: int, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise StreamError(f"redis-server exited with code {process.returncode}: {tail[0]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise StreamError(f"redis-server did not answer on port {port} within {timeout:g} s")
