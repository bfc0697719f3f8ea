"""`judge.mixed` settings, chosen on validation: AP with a few analyst labels per setting.

    .venv/bin/python benchmarks/bench_mixed_labels.py [--config config/config.yaml]
        [--data PATH] [--model DIR] [--labels 50 200]
        [--mixed label_weight=10,unlabelled=soft label_weight=null,label_share=0.5 ...]

Fits the label-free model once (or loads `--model` when it was saved from the same data and
config, and saves it there otherwise), then plays an analyst who reviews the N events of the
**train** part that the label-free judge ranks highest: the oracle reads the label column for
those events only. For each `--mixed` setting (`judge.mixed` keys,
comma-separated) the judge is refitted in `mixed` mode on them
(label-free stages kept, as `hybrid-ad retrain` does) and scored on the validation part, whose
labels no judge here learns from (none of its events is reviewed): the setting is chosen on
that validation AP. Test AP is printed beside it for the record, and read only after the
choice. The fully supervised judge (`truth`, every train label) is measured for scale.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from hybrid_ad.artifacts import read_model_dir
from hybrid_ad.config import config_from_dict, config_to_dict, load_config
from hybrid_ad.core.detector import Detector
from hybrid_ad.jobs.pipeline import load_data
from hybrid_ad.lifecycle.loop import identity_ids, retrain_judge


def _label_free(raw: dict[str, Any]) -> dict[str, Any]:
    """A config without `judge.mixed`: what the label-free model's fit depends on."""
    return {**raw, "judge": {k: v for k, v in raw["judge"].items() if k != "mixed"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--labels", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--no-truth", action="store_true", help="skip the supervised judge")
    parser.add_argument(
        "--mixed",
        nargs="+",
        default=["label_weight=10,unlabelled=soft", "label_weight=10,unlabelled=zero"],
    )
    args = parser.parse_args()
    config = load_config(args.config)
    data = load_data(config, args.data)
    label = config.data.label
    assert label is not None
    started = time.perf_counter()
    base: Detector | None = None
    if args.model is not None and (args.model / "manifest.json").is_file():
        manifest, _ = read_model_dir(args.model)
        if manifest.get("data_sha256") == data.sha256 and _label_free(manifest["config"]) == (
            _label_free(config_to_dict(config))
        ):
            base = Detector.load(args.model)
            base.config = config
    if base is None:
        base = Detector(config).fit(data.part("train"), data.part("validation"))
        base.data_sha256_ = data.sha256
        if args.model is not None:
            base.save(args.model)
    truth = {
        part: getattr(data.split, part)[label].to_numpy(np.int8) for part in ("validation", "test")
    }
    rows = []

    def measure(name: str, detector: Detector, labels: int, weight: str | None) -> None:
        ap = {
            part: average_precision_score(truth[part], detector.score(data.part(part))["score"])
            for part in ("validation", "test")
        }
        rows.append((name, labels, weight, ap["validation"], ap["test"]))
        print(
            f"{name:<22} labels {labels:>6}  {weight or '':<32}  validation AP "
            f"{ap['validation']:.3f}  test AP {ap['test']:.3f}",
            flush=True,
        )

    measure("label-free (pseudo)", base, 0, None)
    if not args.no_truth:
        raw = config_to_dict(config)
        raw["judge"]["label_source"] = "truth"
        supervised = copy.copy(base)
        supervised.config = config_from_dict(raw, "truth")
        supervised.fit_judge(data.part("train"), data.part("validation"))
        measure("supervised (truth)", supervised, len(data.split.train), None)

    train = data.part("train")
    scores = base.score(train)["score"].to_numpy()
    order = np.argsort(-scores, kind="stable")
    ids = identity_ids(base, train)
    oracle = data.split.train[label].to_numpy(np.int8)
    for count in args.labels:
        chosen = order[:count]
        known = pd.Series(oracle[chosen], index=ids[chosen]).astype("float64")
        known = known[~known.index.duplicated()]
        positives = int(known.sum())
        for setting in args.mixed:
            raw = config_to_dict(config)
            raw["judge"]["mixed"] = {
                key: None if value == "null" else value
                for key, value in (item.split("=") for item in setting.split(","))
            }
            weighted = copy.copy(base)
            weighted.config = config_from_dict(raw, "bench")
            detector = retrain_judge(weighted, known, data.part("train"), data.part("validation"))
            measure(f"mixed ({positives} frauds)", detector, count, setting)
    print(f"total {time.perf_counter() - started:.0f} s")
    print(
        "\n| judge | train labels | `judge.mixed` | validation AP | test AP |"
        "\n| --- | ---: | ---: | ---: | ---: |"
    )
    for name, labels, weight, validation_ap, test_ap in rows:
        print(f"| {name} | {labels:,} | {weight or ''} | {validation_ap:.3f} | {test_ap:.3f} |")


if __name__ == "__main__":
    main()
