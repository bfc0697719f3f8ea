"""Choose the pseudo-label refinement quantiles on the validation split, for any config.

The label-free stages are fitted once; for each (demote, promote) pair the judge is refitted on
the refined pseudo-labels and scored on validation. Validation AP decides; test AP is printed
for the record only, never used to choose.

    .venv/bin/python benchmarks/sweep_pseudo_labels.py --config config/streaming_service.yaml
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from sklearn.metrics import average_precision_score

from hybrid_ad import pipeline
from hybrid_ad.config import PseudoLabelConfig, load_config
from hybrid_ad.detector import Detector
from hybrid_ad.pseudo_labels import ErrorBounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--demote", type=float, nargs="+", default=[0.0, 0.9, 0.99, 0.999])
    parser.add_argument("--promote", type=float, nargs="+", default=[0.999, 0.9999, 1.0])
    args = parser.parse_args()
    config = load_config(args.config)
    label = config.data.label
    data = pipeline.load_data(config, None)
    train, validation, test = (data.part(name) for name in ("train", "validation", "test"))
    detector = Detector(config).fit_unsupervised(train, validation)
    outputs = detector.stage_outputs(train)
    normal_errors = outputs.reconstruction_error[~outputs.rules.pseudo_label]
    print("| q_demote | q_promote | positives in train | validation AP | test AP |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for demote, promote in itertools.product(args.demote, args.promote):
        detector.error_bounds_ = ErrorBounds.fit(
            normal_errors,
            PseudoLabelConfig(demote_below_quantile=demote, promote_above_quantile=promote),
        )
        positives = int(detector.training_labels(train.frame, outputs).sum())
        detector.fit_judge(train, validation)
        ap = [
            average_precision_score(part.frame[label].to_numpy(), detector.decision_function(part))
            for part in (validation, test)
        ]
        print(f"| {demote} | {promote} | {positives:,} | {ap[0]:.4f} | {ap[1]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
