"""Fetch OpenML `creditcard` (dataset 1597) into a local cache, when the network allows."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from hybrid_ad.artifacts import atomic_write_bytes
from hybrid_ad.errors import HybridADError
from hybrid_ad.progress import ProgressReporter

OPENML_DATASET_ID = 1597
OPENML_API = os.environ.get("HYBRID_AD_OPENML_URL", "https://www.openml.org/api/v1/json")
TIMEOUT_S = 30


class DownloadError(HybridADError):
    """The dataset could not be fetched; the message says how to use a local file instead."""


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach OpenML ({reason}); download creditcard.csv yourself "
            "(OpenML 1597 or Kaggle mlg-ulb/creditcardfraud) and pass it with --data PATH"
        ) from None


def arff_to_csv(arff: bytes) -> bytes:
    """Turn OpenML's ARFF (numeric attributes, comma-separated data) into CSV with a header."""
    names: list[str] = []
    lines = arff.decode("utf-8").splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        lowered = stripped.lower()
        if lowered.startswith("@attribute"):
            names.append(stripped.split()[1].strip("'\""))
        elif lowered.startswith("@data"):
            body = [row.strip() for row in lines[index + 1 :] if row.strip() and row[0] != "%"]
            return ("\n".join([",".join(names), *body]) + "\n").encode("utf-8")
    raise DownloadError("OpenML answered with a file that has no @data section")


def download_creditcard(cache_dir: Path, progress: ProgressReporter) -> Path:
    """Return the cached CSV path, downloading it first when it is not there yet."""
    target = Path(cache_dir) / "creditcard.csv"
    if target.is_file():
        progress.log(f"already cached: {target}")
        return target
    try:
        description = json.loads(_fetch(f"{OPENML_API}/data/{OPENML_DATASET_ID}"))
        file_url = description["data_set_description"]["url"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DownloadError("OpenML answered with an unexpected dataset description") from None
    with progress.task("downloading creditcard", None) as advance:
        payload = _fetch(file_url)
        advance(len(payload), f"{len(payload) / 1e6:.1f} MB")
    atomic_write_bytes(target, arff_to_csv(payload))
    return target
