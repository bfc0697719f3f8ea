"""A model registry: versions side by side in one directory, and `current`, the one served.

    REGISTRY/
      v1/ v2/ ...        saved models (each with its manifest), never changed once there
      current -> v2      a relative symlink: what `--model REGISTRY/current` loads
      history.json       every switch of `current`, oldest first (written atomically)

`current` is switched by writing a new symlink beside it and renaming it over the old one
(`os.replace`, one rename(2)), so a reader always sees the old or the new version, never
none. `promote` makes a version current; `rollback` undoes the promotion of the current
version, restoring the one that was current before it. The symlink is the truth about what
is current; the history says how it got there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hybrid_ad.artifacts import MANIFEST, atomic_write_json, read_model_dir
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.labels.store import TIME_FORMAT

CURRENT = "current"
HISTORY = "history.json"


@dataclass(frozen=True)
class Version:
    """One model in the registry and what its manifest says about it."""

    name: str
    current: bool
    summary: dict[str, Any]


class Registry:
    """The registry directory at `root` (created by the first `promote`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def current(self) -> str | None:
        """The current version's name, or None before the first promotion."""
        link = self.root / CURRENT
        if not link.is_symlink():
            if link.exists():
                raise ArtifactError(f"{link}: not a symlink; this is not a model registry")
            return None
        return Path(os.readlink(link)).name

    def versions(self) -> list[Version]:
        """Every saved model in the registry, oldest first (by directory time, then name)."""
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such registry directory")
        current = self.current()
        found = [
            path
            for path in self.root.iterdir()
            if path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file()
        ]
        found.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [Version(path.name, path.name == current, _summary(path)) for path in found]

    def promote(self, model: str | Path) -> str:
        """Make `model` current: a version's name, or a model directory, which is copied into
        the registry under its own name unless it is already there. Returns the version."""
        name = self._admit(model)
        previous = self.current()
        if previous == name:
            return name
        self._record("promote", name, previous)
        self._switch(name)
        return name

    def rollback(self) -> str:
        """Undo the promotion of the current version: the one current before it is current
        again. Returns that version."""
        current = self.current()
        if current is None:
            raise InputError(f"{self.root}: no current version to roll back")
        promotions = [
            entry
            for entry in self._history()
            if entry["action"] == "promote" and entry["version"] == current
        ]
        previous = promotions[-1]["previous"] if promotions else None
        if previous is None:
            raise InputError(
                f"{self.root}: version '{current}' was the first current one; "
                "nothing to roll back to"
            )
        if not (self.root / previous / MANIFEST).is_file():
            raise ArtifactError(f"{self.root / previous}: the previous version is missing")
        self._record("rollback", previous, current)
        self._switch(previous)
        return previous

    # -- internals ----------------------------------------------------------------------------

    def _admit(self, model: str | Path) -> str:
        """The version name for `model`, copying a model directory in if it is outside."""
        text = str(model)
        version = self.root / text
        if os.sep not in text and (version / MANIFEST).is_file():
            candidate = version  # a version's name
        elif Path(text).is_dir():
            candidate = Path(text)
        else:
            raise InputError(f"{text}: neither a model directory nor a version in {self.root}")
        _check_model(candidate)
        name = candidate.resolve().name
        if name in (CURRENT, HISTORY) or name.startswith("."):
            raise InputError(f"{candidate}: '{name}' cannot be a version name; rename the model")
        if candidate.resolve().parent == self.root.resolve():
            return name
        target = self.root / name
        if target.exists():
            raise InputError(
                f"{target}: a version named '{name}' is already in the registry; "
                "versions never change, so give the new model another directory name"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        try:
            shutil.copytree(candidate, staging, dirs_exist_ok=True)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return name

    def _switch(self, name: str) -> None:
        temp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        temp.unlink(missing_ok=True)
        os.symlink(name, temp)
        os.replace(temp, self.root / CURRENT)

    def _history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.is_file():
            return []
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["switches"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ArtifactError(f"{path}: registry history is corrupt") from None
        return list(entries)

    def _record(self, action: str, version: str, previous: str | None) -> None:
        """Write the switch to the history before making it, so a crash in between leaves a
        history that says more than happened, never less (rollback reads promotions only)."""
        at = pd.Timestamp.now(tz="UTC").strftime(TIME_FORMAT)
        entry = {"action": action, "version": version, "previous": previous, "at": at}
        atomic_write_json(self.root / HISTORY, {"switches": [*self._history(), entry]})


def _check_model(path: Path) -> None:
    """Refuse anything that is not a complete saved model, before it enters the registry."""
    manifest, files = read_model_dir(path)
    if "judge.json" not in files:
        raise ArtifactError(f"{path}: saved model has no judge (only the label-free stages)")
    if manifest.get("package") != "hybrid-ad":
        raise ArtifactError(f"{path}/{MANIFEST}: not a hybrid-ad model")


def _summary(path: Path) -> dict[str, Any]:
    """What `models list` shows of a version's manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"error": "manifest is corrupt"}
    config = manifest.get("config") or {}
    retrained = manifest.get("retrain") or {}
    snapshot = retrained.get("label_snapshot") or {}
    stages = (manifest.get("metrics") or {}).get("stages") or {}
    judge = stages.get("judge") or {}
    return {
        "label_source": (config.get("judge") or {}).get("label_source"),
        "data_sha256": (manifest.get("data_sha256") or "")[:12] or None,
        "test_average_precision": judge.get("average_precision"),
        "labels": snapshot.get("events"),
        "labels_by_label": snapshot.get("by_label"),
        "labels_as_of": snapshot.get("as_of"),
        "labels_sha256": (snapshot.get("sha256") or "")[:12] or None,
        "parent_manifest_sha256": ((retrained.get("parent") or {}).get("manifest_sha256") or "")[
            :12
        ]
        or None,
    }
