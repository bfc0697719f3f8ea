"""The `--state` directory: the live scorer's checkpoint, owned by one process at a time.

The behavioural state is per process. Two servers scoring into one state directory would each
count their own events and overwrite each other's checkpoint, forking the history silently,
so a server takes an exclusive lock on the directory (`fcntl.flock` on `LOCK_FILE`, released
by the kernel when the process ends, so a crash leaves no stale lock) and a second one is
refused at start. Scale out with one process per shard of entities, each with its own
directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from hybrid_ad.artifacts import atomic_write_bytes, atomic_write_json
from hybrid_ad.errors import InputError

CHECKPOINT_FILE = "live_state.bin"
INFO_FILE = "live_state.json"
LOCK_FILE = "serve.lock"


class StateDir:
    """A locked `--state` directory: `load` the last checkpoint, `save` a new one atomically."""

    def __init__(self, path: Path) -> None:
        if path.exists() and not path.is_dir():
            raise InputError(f"--state {path}: exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle: IO[str] = open(path / LOCK_FILE, "a+")  # noqa: SIM115 (held while serving)
        except OSError as exc:
            raise InputError(f"--state {path}: cannot be used ({exc.strerror})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise InputError(
                f"--state {path}: in use by {owner}; one server per state directory "
                "(run one process per shard, each with its own --state)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"hybrid-ad serve pid {os.getpid()}\n")
        handle.flush()
        self.path = path
        self._lock = handle

    def load(self) -> bytes | None:
        """The last checkpoint's bytes, or None for a fresh directory."""
        checkpoint = self.path / CHECKPOINT_FILE
        return checkpoint.read_bytes() if checkpoint.is_file() else None

    def save(self, state: bytes, info: dict[str, Any]) -> None:
        """Write a checkpoint (and what it is, in JSON beside it); a crash keeps the last one."""
        atomic_write_bytes(self.path / CHECKPOINT_FILE, state)
        atomic_write_json(
            self.path / INFO_FILE, {**info, "saved_at_unix": time.time(), "bytes": len(state)}
        )

    def info(self) -> dict[str, Any] | None:
        """What the last checkpoint recorded about itself, if there is one."""
        path = self.path / INFO_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Release the lock (also released when the process ends)."""
        self._lock.close()
