"""The stream processor's checkpoint: the scorer's state and the stream position, in one file.

`DIR/checkpoint.json` holds the live scorer's state (`live.checkpoint()`, base64) together
with the id of the last stream entry that state has applied, written with an atomic rename:
a crash leaves either the previous checkpoint or the new one, never a state without its
position or a position without its state.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hybrid_ad.artifacts import atomic_write_json, sha256_bytes
from hybrid_ad.errors import ArtifactError

FILE_NAME = "checkpoint.json"
FORMAT = "hybrid-ad.stream-checkpoint"
VERSION = 1


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
        payload = asdict(self)
        payload["state"] = base64.b64encode(self.state).decode("ascii")
        payload.update(format=FORMAT, version=VERSION, state_sha256=sha256_bytes(self.state))
        atomic_write_json(directory / FILE_NAME, payload)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint in `directory`, or None if there is none yet."""
    path = directory / FILE_NAME
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} file of version {VERSION}")
        state = base64.b64decode(payload["state"], validate=True)
        if sha256_bytes(state) != payload["state_sha256"]:
            raise ValueError("the state does not match its checksum")
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
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: damaged checkpoint ({exc})") from None
