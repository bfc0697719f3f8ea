"""The stream processor's checkpoint: the scorer's state and the stream position, in one file.

`DIR/stream.checkpoint` holds, on its first line, a JSON header (the id of the last stream entry
the state has applied, the stream's fields, counts, the state's length and sha256) and after
it the live scorer's state as `live.checkpoint()` gave it, byte for byte; written to a
temporary file, fsynced and renamed over the old one:
a crash leaves either the previous checkpoint or the new one, never a state without its
position or a position without its state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hybrid_ad.artifacts import atomic_write_bytes, sha256_bytes
from hybrid_ad.errors import ArtifactError

FILE_NAME = "stream.checkpoint"
FORMAT = "hybrid-ad.stream-checkpoint"
VERSION = 2


@dataclass(frozen=True)
class Checkpoint:
    """What a restarted processor continues from.

    `last_id`: the last entry the state has applied (None before any); `fields`: the stream's
    columns, fixed by its first well-formed entry (an entry with another field is a dead
    letter); the counts are over the processor's whole life.
    """

    stream: str
    group: str
    model_version: str
    last_id: str | None
    state: bytes
    fields: list[str] | None = None
    events: int = 0
    alerts: int = 0
    dead_letters: int = 0

    def save(self, directory: Path) -> None:
        header = {key: value for key, value in asdict(self).items() if key != "state"}
        header.update(
            format=FORMAT,
            version=VERSION,
            state_bytes=len(self.state),
            state_sha256=sha256_bytes(self.state),
        )
        line = json.dumps(header, sort_keys=True, ensure_ascii=True).encode("ascii") + b"\n"
        atomic_write_bytes(directory / FILE_NAME, line + self.state)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint in `directory`, or None if there is none yet."""
    path = directory / FILE_NAME
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
        first, _, state = data.partition(b"\n")
        payload = json.loads(first)
        if not isinstance(payload, dict):
            raise ValueError("no header")
        if payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} file of version {VERSION}")
        if len(state) != payload["state_bytes"] or sha256_bytes(state) != payload["state_sha256"]:
            raise ValueError("the state does not match its length and checksum")
        fields = payload["fields"]
        return Checkpoint(
            stream=str(payload["stream"]),
            group=str(payload["group"]),
            model_version=str(payload["model_version"]),
            last_id=None if payload["last_id"] is None else str(payload["last_id"]),
            state=state,
            fields=None if fields is None else [str(name) for name in fields],
            events=int(payload["events"]),
            alerts=int(payload["alerts"]),
            dead_letters=int(payload["dead_letters"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: damaged checkpoint ({exc})") from None
