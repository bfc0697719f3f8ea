"""Atomic file writes and the checked model directory: nothing is pickled, everything is hashed.

A model directory holds plain files (JSON, safetensors, XGBoost JSON) and a `manifest.json`
that records the sha256 of each, and of itself (its metrics, data hash and seed are part of
the record). Loading verifies every hash first, so a truncated or edited artifact is refused
before any of it is parsed; a file the manifest does not list is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybrid_ad.errors import ArtifactError, InputError

MANIFEST = "manifest.json"
FORMAT_VERSION = 3
"""2: the manifest carries its own checksum (`manifest_sha256`); 3: autoencoder.json carries
the autoencoder's input scaling."""
MANIFEST_SHA256 = "manifest_sha256"
RUNS_DIR = ".runs"
CURRENT = ".current"
"""`OUT/.current` links to the run in `OUT/.runs/` whose outputs `OUT/model` and
`OUT/reports` show; one rename of it switches them all together."""
REPORT_SUFFIXES = (".html", ".json", ".png")


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output path that can never become a file."""
    if path.is_dir():
        raise InputError(f"{option} {path}: is a directory; give a file name")
    _check_parents(path, option)


def check_output_dir(path: Path, option: str) -> None:
    """Refuse, before any work, an output directory that is a file or under one."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a directory")
    _check_parents(path, option)


def _check_parents(path: Path, option: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {path}: {parent} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{option} {path}: cannot write in {parent}")
            return


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""

    def write(temp: Path) -> None:
        with open(temp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())

    atomic_write_with(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a temporary path (for libraries that write files themselves).

    The temporary name holds this process's id, so the leftovers of a killed writer of the
    same file are recognised and removed by the next write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, f".{path.name}.")
    handle, temp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=path.suffix
    )
    os.close(handle)
    try:
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes the file private
        writer(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask (only readable by setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(folder: Path, prefix: str) -> None:
    """Remove `prefix<pid>.*` temporaries left in `folder` by processes that no longer run."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, leaving out the checksum itself."""
    body = {key: value for key, value in manifest.items() if key != MANIFEST_SHA256}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def write_model_dir(
    directory: str | Path, files: dict[str, bytes], manifest: dict[str, Any]
) -> None:
    """Write all files and the manifest into a fresh directory, then swap it into place.

    A crash part-way leaves the previous model directory untouched (and its staging folder
    is removed by the next save); what is in the way and is not a saved model is refused.
    """
    directory = Path(directory)
    check_replaceable_model(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(directory.parent, f".{directory.name}.")
    staging = Path(
        tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.{os.getpid()}.")
    )
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes the folder private
        for name, data in files.items():
            (staging / name).write_bytes(data)
        full_manifest = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "files": {name: sha256_bytes(data) for name, data in sorted(files.items())},
        }
        full_manifest[MANIFEST_SHA256] = manifest_checksum(full_manifest)
        (staging / MANIFEST).write_text(json.dumps(full_manifest, indent=2, sort_keys=True) + "\n")
        retired = None
        if directory.exists() or directory.is_symlink():
            retired = directory.with_name(f".{directory.name}.{os.getpid()}.retired")
            directory.rename(retired)
        staging.rename(directory)
        if retired is not None:
            _remove_path(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_replaceable_model(directory: Path) -> None:
    """Only a saved model, an empty folder or nothing may stand where a model is written."""
    if directory.is_symlink() or not directory.exists():
        return
    if not directory.is_dir() or not (
        (directory / MANIFEST).is_file() or not any(directory.iterdir())
    ):
        raise ArtifactError(f"{directory}: exists and is not a saved model; refusing to replace it")


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def read_model_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read the manifest and every file it lists, refusing anything missing or altered."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{directory}: not a saved model (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(f"{manifest_path}: manifest is truncated or corrupt") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{manifest_path}: manifest has no file list")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: model format {manifest.get('format_version')!r} is not supported "
            f"(this version reads format {FORMAT_VERSION})"
        )
    if manifest.get(MANIFEST_SHA256) != manifest_checksum(manifest):
        raise ArtifactError(f"{manifest_path}: checksum mismatch; the manifest was modified")
    unlisted = sorted(
        path.name
        for path in directory.iterdir()
        if path.name != MANIFEST and path.name not in manifest["files"]
    )
    if unlisted:
        raise ArtifactError(f"{directory / unlisted[0]}: not listed in the manifest")
    files: dict[str, bytes] = {}
    for name, expected in manifest["files"].items():
        if Path(name).name != name:
            raise ArtifactError(f"{manifest_path}: file name {name!r} leaves the model directory")
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing model file")
        data = path.read_bytes()
        if sha256_bytes(data) != expected:
            raise ArtifactError(f"{path}: checksum mismatch; the file is truncated or was modified")
        files[name] = data
    return manifest, files


def check_publishable(out_dir: Path, names: tuple[str, ...]) -> None:
    """Refuse, before any work, to publish over something that is not an earlier output."""
    for name in names:
        path = out_dir / name
        if path.is_symlink() or not path.exists():
            continue
        if name == "reports":
            entries = list(path.iterdir()) if path.is_dir() else [path]
            if path.is_dir() and all(
                entry.is_file() and entry.suffix in REPORT_SUFFIXES for entry in entries
            ):
                continue
            raise ArtifactError(
                f"{path}: exists and is not a report folder (only .html, .json and .png files); "
                "refusing to replace it"
            )
        check_replaceable_model(path)
    current = out_dir / CURRENT
    if current.exists() and not current.is_symlink():
        raise ArtifactError(f"{current}: exists and is not a link to a run; refusing to replace it")


@contextmanager
def published_outputs(out_dir: Path, names: tuple[str, ...]) -> Iterator[Path]:
    """Stage a run's outputs (`names`: model, reports) in one folder, then switch them in.

    The caller writes `stage/model`, `stage/reports`; on success one rename of the
    `OUT/.current` link makes all of them visible at once through the fixed links
    `OUT/model -> .current/model` and `OUT/reports -> .current/reports`. A crash or an
    error before that leaves the previous outputs as they were, and the next run removes
    the abandoned stage.
    """
    check_publishable(out_dir, names)
    runs = out_dir / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    for name in (*names, CURRENT):
        _remove_stale(out_dir, f".{name}.")
    stage = Path(tempfile.mkdtemp(dir=runs, prefix=f"{os.getpid()}."))
    try:
        os.chmod(stage, 0o777 & ~current_umask())
        yield stage
        for name in names:
            (stage / name).mkdir(exist_ok=True)
        _replace_link(out_dir / CURRENT, f"{RUNS_DIR}/{stage.name}")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for name in names:
        _replace_link(out_dir / name, f"{CURRENT}/{name}")
    for run in runs.iterdir():
        pid = run.name.split(".", 1)[0]
        stale = pid.isdigit() and (int(pid) == os.getpid() or not _process_alive(int(pid)))
        if run.name != stage.name and stale:
            _remove_path(run)


def _replace_link(path: Path, target: str) -> None:
    """Point the link `path` at `target` with one rename; an earlier real output is retired."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.link")
    os.symlink(target, temp)
    if path.exists() and not path.is_symlink():
        retired = path.with_name(f".{path.name}.{os.getpid()}.retired")
        path.rename(retired)
        os.replace(temp, path)
        _remove_path(retired)
    else:
        os.replace(temp, path)


ARRAYS_MAGIC = b"hybrid-ad.arrays/1\n"
"""The first line of `pack_arrays`' bytes."""
_ARRAY_DTYPES = {"<f8": "<f8", "<i8": "<i8", "|u1": "|u1", "|b1": "|b1"}


def pack_arrays(meta: dict[str, Any], arrays: dict[str, Any]) -> bytes:
    """A JSON header and numpy arrays as one byte string, without pickle: the magic line, a
    JSON line (`meta` and each array's name, dtype and shape), then the arrays' raw bytes in
    that order (little-endian, C order). The same content gives the same bytes, and writing a
    large state costs a copy rather than a Python object per number (`unpack_arrays`)."""
    import numpy as np

    parts, layout = [], []
    for name, values in arrays.items():
        array = np.ascontiguousarray(values)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype.str not in _ARRAY_DTYPES:
            raise ValueError(f"pack_arrays: {name} has dtype {array.dtype}, not a plain number")
        array = array.astype(dtype, copy=False)
        layout.append([name, dtype.str, list(array.shape)])
        parts.append(array.tobytes())
    header = json.dumps({"meta": meta, "arrays": layout}, allow_nan=False, separators=(",", ":"))
    return b"".join([ARRAYS_MAGIC, header.encode("utf-8"), b"\n", *parts])


def unpack_arrays(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """What `pack_arrays` packed: (meta, arrays by name, read-only views of `data`); damaged or
    foreign bytes are a ValueError naming what is wrong."""
    import numpy as np

    if not data.startswith(ARRAYS_MAGIC):
        raise ValueError("not a hybrid-ad arrays document")
    end = data.find(b"\n", len(ARRAYS_MAGIC))
    if end < 0:
        raise ValueError("no header line")
    try:
        header = json.loads(data[len(ARRAYS_MAGIC) : end])
        meta, layout = header["meta"], header["arrays"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError("malformed header line") from None
    if not isinstance(meta, dict) or not isinstance(layout, list):
        raise ValueError("malformed header line")
    arrays: dict[str, Any] = {}
    at = end + 1
    for item in layout:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or item[1] not in _ARRAY_DTYPES
            or not isinstance(item[2], list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in item[2])
        ):
            raise ValueError(f"malformed array entry {item!r}")
        name, dtype, shape = str(item[0]), np.dtype(item[1]), tuple(item[2])
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if at + size > len(data):
            raise ValueError(f"array {name} is cut short")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=at)
        arrays[name] = arrays[name].reshape(shape)
        at += size
    if at != len(data):
        raise ValueError(f"{len(data) - at} bytes after the last array")
    return meta, arrays
