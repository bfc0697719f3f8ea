"""Feature backfill: a whole history's behavioural features as a table `run` can train on.

The table is a directory of Parquet parts (what Spark writes, and what the local engine
writes too, so both engines give the same kind of output): every input column, then the
behavioural features in `feature_names` order, one row per input event in arrival order,
and `_hybrid_ad_features.json` naming the behavioural config the features were made with.
`run` (and `score`) take such a table as it is: when every behavioural column is present the
features are not recomputed, and the sidecar must match the config (docs/spark.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybrid_ad.artifacts import current_umask
from hybrid_ad.behavioural.batch import BehaviouralConfig, feature_names
from hybrid_ad.config import Config
from hybrid_ad.data import read_table
from hybrid_ad.errors import ArtifactError, ConfigError, InputError
from hybrid_ad.stages.features import prepare_events

FEATURES_META = "_hybrid_ad_features.json"
"""The sidecar of a feature table: the behavioural config and feature names."""
LOCAL_PART = "part-00000.parquet"
TABLE_MARKERS = (FEATURES_META, "_SUCCESS")
"""Files that mark a directory as an earlier table output, which may be replaced."""


def features_metadata(config: Config) -> dict[str, Any]:
    behavioural = require_behavioural(config)
    return {
        "behavioural": behavioural.model_dump(mode="json"),
        "features": feature_names(behavioural),
    }


def require_behavioural(config: Config) -> BehaviouralConfig:
    if config.features.behavioural is None:
        raise ConfigError("features.behavioural: not set, so there are no features to backfill")
    return config.features.behavioural


def check_table_output(output: Path, input_path: Path) -> None:
    """Refuse, before any work, an output that is the input, a file, or a foreign folder."""
    if output.absolute() == input_path.absolute() or (
        output.exists() and input_path.exists() and output.samefile(input_path)
    ):
        raise InputError(f"--output {output}: is the input; write the table elsewhere")
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: exists and is not a directory")
    earlier = any((output / marker).exists() for marker in TABLE_MARKERS)
    if output.is_dir() and any(output.iterdir()) and not earlier:
        raise ArtifactError(
            f"--output {output}: exists and is not an earlier table output; refusing to replace it"
        )
    parent = output.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--output {output}: cannot write in {parent}")


@contextmanager
def staged_table(output: Path) -> Iterator[Path]:
    """A fresh folder beside `output` to fill; on success it replaces `output` in one rename,
    so readers see the old table or the new one, never a half-written one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.{os.getpid()}."))
    table = staging / "table"
    try:
        yield table
        os.chmod(table, 0o777 & ~current_umask())
        if output.exists():
            output.rename(staging / "retired")
        table.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_metadata(table: Path, config: Config) -> None:
    text = json.dumps(features_metadata(config), indent=2, sort_keys=True) + "\n"
    (table / FEATURES_META).write_text(text)


def check_feature_table(path: Path, config: Config) -> None:
    """A table directory with a sidecar must have been made with this behavioural config."""
    meta_path = path / FEATURES_META
    if not path.is_dir() or not meta_path.is_file():
        return
    try:
        meta = json.loads(meta_path.read_text())
        made_with = meta["behavioural"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta_path}: malformed ({exc})") from None
    behavioural = config.features.behavioural
    wanted = None if behavioural is None else behavioural.model_dump(mode="json")
    if made_with != wanted:
        changed = sorted(
            key
            for key in set(made_with) | set(wanted or {})
            if made_with.get(key) != (wanted or {}).get(key)
        )
        raise InputError(
            f"{meta_path}: the features were made with another behavioural config "
            f"(differs in {', '.join(changed) or 'features.behavioural'}); backfill them again"
        )


def features_local(config: Config, input_path: Path, output: Path) -> int:
    """The single-process engine: `prepare_events` over the whole file, written as a table."""
    require_behavioural(config)
    check_table_output(output, input_path)
    raw = read_table(input_path)
    events = prepare_events(raw, config, str(input_path)).frame
    names = feature_names(config.features.behavioural)
    table_frame = raw.join(events[names]) if len(raw) else raw
    with staged_table(output) as table:
        table.mkdir()
        table_frame.to_parquet(table / LOCAL_PART, index=False)
        write_metadata(table, config)
    return len(table_frame)
