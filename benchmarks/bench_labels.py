"""Importing 100,000 labels into the label store, both backends: median of 3 fresh stores.

    .venv/bin/python benchmarks/bench_labels.py [--rows 100000] [--postgres URL]

Per backend it times, each into a fresh store: the library path (read the CSV, validate,
append in one transaction) and the whole command `hybrid-ad labels import FILE --store S` in a
new process, and, for scale, the command line's start-up alone (`hybrid-ad labels --help`).
PostgreSQL gets a fresh schema in the given database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from hybrid_ad.labels import open_store, read_verdicts

RUNS = 3
COMMAND = [sys.executable, "-m", "hybrid_ad.cli", "labels"]


def write_verdicts(path: Path, rows: int, seed: int = 0) -> None:
    """Verdicts as analysts and chargebacks would send them: some relabels, some notes."""
    rng = np.random.default_rng(seed)
    events = rng.integers(0, rows * 0.9, rows)
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    frame = pd.DataFrame(
        {
            "event_id": [f"{value:016x}" for value in events * 2654435761],
            "label": (rng.random(rows) < 0.05).astype(int),
            "source": rng.choice(["analyst", "chargeback"], rows, p=[0.9, 0.1]),
            "analyst": rng.choice(["ann", "bob", "cy", ""], rows),
            "labelled_at": (start + pd.to_timedelta(rng.integers(0, 30 * 86_400, rows), "s"))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_numpy(),
            "note": np.where(rng.random(rows) < 0.2, "reviewed in queue", ""),
        }
    )
    # Relabels at the same instant with different labels would be refused as conflicts.
    frame = frame.drop_duplicates(["event_id", "labelled_at"])
    frame.to_csv(path, index=False)


@contextmanager
def fresh_store(backend: str, root: Path, postgres: str) -> Iterator[str]:
    if backend == "sqlite":
        yield str(root / f"labels-{uuid.uuid4().hex[:8]}.db")
        return
    schema = f"bench_labels_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{postgres}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def library_import(path: Path, store: str) -> None:
    with open_store(store, create=True) as target:
        target.append(read_verdicts(path), str(path))


def command_import(path: Path, store: str) -> None:
    subprocess.run([*COMMAND, "import", str(path), "--store", store, "--quiet"], check=True)


def median_seconds(work: Callable[[str], None], backend: str, root: Path, postgres: str) -> float:
    times = []
    for _ in range(RUNS):
        with fresh_store(backend, root, postgres) as store:
            start = time.perf_counter()
            work(store)
            times.append(time.perf_counter() - start)
            with open_store(store) as check:
                assert check.stats().verdicts > 0
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql://127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        path = root / "verdicts.csv"
        write_verdicts(path, args.rows)
        rows = len(read_verdicts(path))
        startup = []
        for _ in range(RUNS):
            start = time.perf_counter()
            subprocess.run([*COMMAND, "--help"], check=True, capture_output=True)
            startup.append(time.perf_counter() - start)
        print(f"{rows:,} verdicts; median of {RUNS} runs, each into a fresh store")
        print("| backend | library: read + validate + append | `hybrid-ad labels import` |")
        print("| --- | ---: | ---: |")
        for backend in ("sqlite", "postgresql"):
            library = median_seconds(
                lambda store: library_import(path, store), backend, root, args.postgres
            )
            command = median_seconds(
                lambda store: command_import(path, store), backend, root, args.postgres
            )
            print(f"| {backend} | {library:.2f} s | {command:.2f} s |")
        startup_s = statistics.median(startup)
        print(f"| command-line start-up alone (`labels --help`) | | {startup_s:.2f} s |")


if __name__ == "__main__":
    main()
