"""`judge.label_source: mixed` on the demo data: test AP with a few analyst labels.

    .venv/bin/python benchmarks/bench_mixed_labels.py [--data PATH] [--labels 50 200]
        [--weights 1 10 100]

Fits the label-free model once (config/config.yaml), then plays an analyst who reviews the
N training and validation events the label-free judge ranks highest: the oracle reads the
label column for those events only and writes them to a fresh SQLite label store. For each
label weight it runs `retrain` (the judge refitted, label-free stages kept) and measures
average precision on the test split, which no label ever comes from. The fully supervised
judge (`truth`, every training label) is measured in the same run for scale.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from hybrid_ad.config import config_from_dict, config_to_dict, load_config
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import event_ids, read_table
from hybrid_ad.jobs.pipeline import load_data
from hybrid_ad.labels import open_store
from hybrid_ad.lifecycle.retrain import retrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/demo/creditcard_50k.csv.gz"))
    parser.add_argument("--labels", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    args = parser.parse_args()
    config = load_config(args.config)
    data = load_data(config, args.data)
    label = config.data.label
    test_labels = data.split.test[label].to_numpy(np.int8)
    rows = []

    def measure(name: str, detector: Detector, labels: int, weight: float | None) -> None:
        scores = detector.score(data.part("test"))["score"].to_numpy()
        ap = average_precision_score(test_labels, scores)
        rows.append((name, labels, weight, ap))
        print(f"{name:<22} labels {labels:>5}  weight {weight!s:>6}  test AP {ap:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        base = Detector(config).fit(data.part("train"), data.part("validation"))
        base.data_sha256_ = data.sha256
        base.save(root / "pseudo")
        measure("label-free (pseudo)", base, 0, None)
        raw = config_to_dict(config)
        raw["judge"]["label_source"] = "truth"
        supervised = copy.copy(base)
        supervised.config = config_from_dict(raw, "truth")
        supervised.fit_judge(data.part("train"), data.part("validation"))
        known = len(data.split.train) + len(data.split.validation)
        measure("supervised (truth)", supervised, known, None)

        seen = pd.concat([data.split.train, data.split.validation])
        scored = pd.concat([base.score(data.part(p)) for p in ("train", "validation")])
        order = scored.index[np.argsort(-scored["score"].to_numpy(), kind="stable")]
        ids = event_ids(read_table(args.data), config.data)
        for count in args.labels:
            chosen = order[:count]
            verdicts = pd.DataFrame(
                {
                    "event_id": ids.loc[chosen].to_numpy(),
                    "label": seen.loc[chosen, label].to_numpy(),  # the oracle, reviewed only
                    "source": "analyst",
                    "labelled_at": "2026-01-01T00:00:00Z",
                }
            ).drop_duplicates("event_id")
            store = root / f"labels-{count}.db"
            with open_store(store, create=True) as target:
                target.append(verdicts)
            positives = int(verdicts["label"].sum())
            for weight in args.weights:
                tuned = config_to_dict(load_config(args.config))
                tuned["judge"]["mixed"] = {"label_weight": weight}
                start = root / f"start-{weight:g}"
                with_weight = Detector.load(root / "pseudo")
                with_weight.config = config_from_dict(tuned, "bench")
                with_weight.save(start)
                out = root / f"mixed-{count}-{weight:g}"
                retrain(start, str(store), args.data, out)
                measure(f"mixed ({positives} frauds)", Detector.load(out), count, weight)
        print(f"total {time.perf_counter() - started:.0f} s")
    print("\n| judge | labels | label weight | test AP |\n| --- | ---: | ---: | ---: |")
    for name, labels, weight, ap in rows:
        print(f"| {name} | {labels:,} | {'' if weight is None else f'{weight:g}'} | {ap:.3f} |")


if __name__ == "__main__":
    main()
