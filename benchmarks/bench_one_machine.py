"""`hybrid-ad run` in this process with wall time, CPU time and peak memory per phase (#13).

Wraps the pipeline's heavy functions with timers and samples the resident memory every
50 ms, then runs the command line as given; writes the figures as JSON. CPU seconds (all
threads of the process) move less than wall seconds on a shared machine: compare those.

    .venv/bin/hybrid-ad simulate --out data/simulated/streaming5k.parquet --accounts 5000 \\
        --days 30 --seed 7
    .venv/bin/python benchmarks/bench_one_machine.py --json phases.json -- run \\
        --config config/streaming_service.yaml \\
        --set data.path=data/simulated/streaming5k.parquet --out artifacts/onemachine
"""

from __future__ import annotations

import argparse
import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from hybrid_ad.cli import app
from hybrid_ad.core import detector
from hybrid_ad.jobs import pipeline
from hybrid_ad.monitoring import reference
from hybrid_ad.stages import autoencoder, features, judge, label_free, rules

TIMED: list[tuple[Any, str, str]] = [
    (pipeline, "load_data", "load_data"),
    (features.FeatureBuilder, "fit", "features_fit"),
    (features.FeatureBuilder, "transform", "features_transform"),
    (rules.RuleSet, "evaluate", "rules_evaluate"),
    (autoencoder.Autoencoder, "fit", "ae_fit"),
    (autoencoder.Autoencoder, "transform", "ae_transform"),
    (label_free.HistogramDetector, "fit", "hbos_fit"),
    (label_free.HistogramDetector, "decision_function", "hbos_score"),
    (detector.Detector, "_outputs", "stage_outputs"),
    (detector.Detector, "fit_unsupervised", "fit_unsupervised"),
    (detector.Detector, "fit_judge", "fit_judge_total"),
    (detector.Detector, "training_labels", "training_labels"),
    (detector.Detector, "score", "detector_score"),
    (detector.Detector, "stage_scores", "stage_scores"),
    (detector.Detector, "without_autoencoder_inputs", "fit_ablation"),
    (pipeline, "top_alerts", "top_alerts"),
    (judge.Judge, "fit", "judge_fit"),
    (judge.Judge, "predict_proba", "judge_predict"),
    (reference.DriftReference, "fit", "drift_reference_fit"),
    (pipeline, "evaluate_step", "evaluate_step"),
    (pipeline, "write_report", "write_report"),
    (pipeline, "save_evaluated", "save"),
]


class Probe:
    """Seconds, calls and peak resident memory per wrapped function."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.peak = 0
        self.active: list[str] = []
        self.timeline: list[tuple[float, int, str]] = []
        """Every second: seconds since start, the largest RSS (MiB) in it, the phases active."""

    def sample(self) -> None:
        start = time.perf_counter()
        second, second_peak = 0, 0
        while True:
            rss = self.process.memory_info().rss
            self.peak = max(self.peak, rss)
            for name in list(self.active):
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
            second_peak = max(second_peak, rss)
            now = int(time.perf_counter() - start)
            if now > second:
                self.timeline.append((second, round(second_peak / 2**20), "/".join(self.active)))
                second, second_peak = now, 0
            time.sleep(0.05)

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        original: Callable[..., Any] = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.active.append(name)
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                spent = time.process_time() - cpu
                self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + spent
                self.calls[name] = self.calls.get(name, 0) + 1
                self.active.remove(name)

        setattr(owner, attribute, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then hybrid-ad arguments")
    args = parser.parse_args()
    command = [part for part in args.command if part != "--"]
    probe = Probe()
    for owner, attribute, name in TIMED:
        probe.wrap(owner, attribute, name)
    threading.Thread(target=probe.sample, daemon=True).start()
    start, cpu = time.perf_counter(), time.process_time()
    app(command, standalone_mode=False)
    figures = {
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "peak_rss_mib": round(probe.peak / 2**20),
        "timings_s": {name: round(value, 2) for name, value in probe.seconds.items()},
        "cpu_s_by_phase": {name: round(value, 2) for name, value in probe.cpu_seconds.items()},
        "calls": probe.calls,
        "phase_peak_mib": {name: round(value / 2**20) for name, value in probe.peaks.items()},
        "timeline_mib": probe.timeline,
    }
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({key: value for key, value in figures.items() if key != "timeline_mib"}))


if __name__ == "__main__":
    main()
