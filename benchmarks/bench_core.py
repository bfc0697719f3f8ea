"""Latency and throughput of the scoring core (`LiveScorer.score_many`) on the streaming model,
one thread, each figure next to XGBoost and the autoencoder alone measured in the same run.

Run `make streaming` first (it writes the model and the events), then:

    .venv/bin/python benchmarks/bench_core.py [--repeats 5]

Per repeat, a fresh scorer is warmed up on `--warm` events (not timed), then:
- micro-batches of `--batch` events through the whole detector (behavioural state, rules,
  autoencoder, histogram, judge, reasons for the alerting events), events/s; next to the
  judge alone (`inplace_predict`) on the same batches' inputs;
- `--single` events one at a time (`score_many` of one event, as numpy columns; reasons when it
  alerts), p50 / p99; next to XGBoost alone and the autoencoder alone on one row.
Also the share of one-event calls a garbage collection ran in, and their p50: XGBoost's
Python wrapper leaves 25 objects of cyclic garbage on every prediction (a class defined per
call), so with it a collection ran every few dozen events, and those were the tail that set
p99; the judge now calls XGBoost's C function itself (`hybrid_ad.stages.dense_predict`).
XGBoost alone is `Booster.inplace_predict`, the library's own one-row call, and the
autoencoder alone is its torch module's forward, so the baselines are the same whichever
version of the detector runs.
Medians over the repeats are printed as Markdown rows for BENCHMARKS.md. `--clock cpu` times
the process's CPU time instead of wall-clock: on a busy machine it leaves out the waits for
a core (the baselines are timed the same way).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from hybrid_ad.core.detector import Detector  # noqa: E402
from machine_context import machine  # noqa: E402  (benchmarks/, the script's own folder)

REPO = Path(__file__).resolve().parents[1]
CLOCK = [time.perf_counter]
"""What the figures time: wall-clock (`--clock wall`, the default) or this process's CPU time
(`--clock cpu`), which a busy machine's waiting for a core does not inflate."""


class COLLECTIONS:
    """Garbage collections seen (a `gc.callbacks` hook): cyclic garbage left by a call (as
    XGBoost's `inplace_predict` leaves) makes a generation-0 collection run every few dozen
    events, and the events it lands in are the tail."""

    count = 0

    @staticmethod
    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            COLLECTIONS.count += 1


def percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
    return float(p50), float(p99)


VARIANTS = {
    "exact": {"contributions": "exact"},
    "approximate": {"contributions": "approximate"},
    "none": {"explain": "none"},
}
"""Reasons for the alerting events with exact TreeSHAP (what `explain` writes by default),
with approximate contributions (Saabas, the live path's default), or no reasons."""


def warmed(detector: Detector, warm: pd.DataFrame, batch: int):
    live = detector.live()
    for start in range(0, len(warm), batch):
        live.score_many(warm.iloc[start : start + batch], explain="none")
    return live


def one_repeat(detector: Detector, events: pd.DataFrame, args: argparse.Namespace) -> dict:
    warm, rest = events.iloc[: args.warm], events.iloc[args.warm :]
    n_batch = args.batch * args.batches
    timed = rest.iloc[:n_batch]
    batches = [timed.iloc[s : s + args.batch] for s in range(0, n_batch, args.batch)]
    singles = rest.iloc[n_batch : n_batch + args.single]
    needed = [c for c in singles.columns if c not in ("is_anomaly", "anomaly_kind")]
    arrays = {name: singles[name].to_numpy() for name in needed}
    one_event = [
        {name: values[i : i + 1] for name, values in arrays.items()} for i in range(len(singles))
    ]
    result: dict = {}
    alerts = 0
    for name, options in VARIANTS.items():
        live = warmed(detector, warm, args.batch)
        start = CLOCK[0]()
        for batch in batches:
            alerts += int(live.score_many(batch, **options).columns["alert"].sum())
        result[f"rate_{name}"] = n_batch / (CLOCK[0]() - start)
        latencies, collected = [], []
        gc.callbacks.append(COLLECTIONS.seen)
        for event in one_event:
            COLLECTIONS.count = 0
            before = CLOCK[0]()
            live.score_many(event, **options)
            latencies.append(CLOCK[0]() - before)
            collected.append(COLLECTIONS.count > 0)
        gc.callbacks.remove(COLLECTIONS.seen)
        result[f"single_{name}"] = percentiles(latencies)
        with_gc = [s for s, hit in zip(latencies, collected, strict=True) if hit]
        result[f"gc_{name}"] = (len(with_gc) / len(latencies), percentiles(with_gc or [0.0])[0])
    live = warmed(detector, warm, args.batch)
    for batch in batches:
        live.score_many(batch, explain="none")
    records = singles.to_dict("records")
    event_latencies = []
    for record in records:
        before = CLOCK[0]()
        live.score_event(record)
        event_latencies.append(CLOCK[0]() - before)
    result["score_event"] = percentiles(event_latencies)

    # the judge alone on the judge inputs of the same events, and the autoencoder alone
    judge = detector.fitted_judge()
    inputs = detector.judge_inputs(detector.stage_outputs(timed, history=warm))[0]
    start = CLOCK[0]()
    for s in range(0, n_batch, args.batch):
        judge.predict_proba(inputs[s : s + args.batch], threads=1)
    result["rate_judge"] = n_batch / (CLOCK[0]() - start)
    outputs = detector.stage_outputs(singles, history=pd.concat([warm, timed]))
    single_inputs = detector.judge_inputs(outputs)[0]
    booster, rounds = judge.booster_, (0, judge.best_round)
    judge.predict_proba(single_inputs[:1], threads=1)  # the booster set to one thread
    xgb_latencies = []
    for row in range(len(single_inputs)):
        before = CLOCK[0]()
        booster.inplace_predict(single_inputs[row : row + 1], iteration_range=rounds)
        xgb_latencies.append(CLOCK[0]() - before)
    judge_latencies = []
    for row in range(len(single_inputs)):
        before = CLOCK[0]()
        judge.predict_proba(single_inputs[row : row + 1], threads=1)
        judge_latencies.append(CLOCK[0]() - before)
    network = detector.autoencoder_.network_
    scaled = outputs.features.scaled[:, detector.autoencoder_inputs_]
    ae_rows = torch.from_numpy(np.ascontiguousarray(scaled))
    ae_latencies = []
    with torch.inference_mode():
        for row in range(len(ae_rows)):
            before = CLOCK[0]()
            network(ae_rows[row : row + 1])
            ae_latencies.append(CLOCK[0]() - before)
    result["xgb"] = percentiles(xgb_latencies)
    result["judge_one"] = percentiles(judge_latencies)
    result["ae"] = percentiles(ae_latencies)
    result["alert_share"] = alerts / (n_batch * len(VARIANTS))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "artifacts/streaming/model")
    parser.add_argument("--events", type=Path, default=REPO / "data/simulated/streaming.parquet")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warm", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--start", type=int, default=200_000, help="first event used")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    print(f"start: {machine()}", flush=True)
    detector = Detector.load(args.model)
    events = pd.read_parquet(args.events).iloc[args.start :]
    runs = []
    for repeat in range(args.repeats):
        runs.append(one_repeat(detector, events, args))
        run = runs[-1]
        print(
            f"repeat {repeat + 1}: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in run.items() if k.startswith("rate_"))
            + " ev/s; "
            + ", ".join(
                f"{k} {v[0]:.3f}/{v[1]:.3f}"
                for k, v in run.items()
                if isinstance(v, tuple) and not k.startswith("gc_")
            )
            + " ms",
            flush=True,
        )

    def median(key: str, index: int | None = None) -> float:
        values = [run[key] if index is None else run[key][index] for run in runs]
        return statistics.median(values)

    judge = median("rate_judge")
    xgb, ae = (median("xgb", 0), median("xgb", 1)), (median("ae", 0), median("ae", 1))
    alone = (xgb[0] + ae[0], xgb[1] + ae[1])
    print(f"\nend: {machine()}")
    print(
        f"medians of {args.repeats} repeats, one thread, batches of {args.batch}, "
        f"{args.clock} clock:"
    )
    print(
        f"| the judge alone (`inplace_predict`), batches of {args.batch} | "
        f"{judge:,.0f} events/s | 1.0x |"
    )
    labels = {
        "exact": "reasons for alerts, exact TreeSHAP",
        "approximate": "reasons for alerts, approximate contributions (live default)",
        "none": "no reasons",
    }
    for name, label in labels.items():
        rate = median(f"rate_{name}")
        print(
            f"| whole detector, batches of {args.batch}, {label} | {rate:,.0f} events/s | "
            f"{judge / rate:.1f}x the judge's time |"
        )
    print(f"| alerting events | {median('alert_share'):.2%} | |")
    print(f"| XGBoost alone, one row, p50 / p99 | {xgb[0]:.3f} / {xgb[1]:.3f} ms | |")
    print(f"| autoencoder alone, one row, p50 / p99 | {ae[0]:.3f} / {ae[1]:.3f} ms | |")
    p50, p99 = median("judge_one", 0), median("judge_one", 1)
    print(f"| the judge's `predict_proba`, one row, p50 / p99 | {p50:.3f} / {p99:.3f} ms | |")
    for name, label in labels.items():
        p50, p99 = median(f"single_{name}", 0), median(f"single_{name}", 1)
        print(
            f"| one event (`score_many`), {label}, p50 / p99 | {p50:.3f} / {p99:.3f} ms | "
            f"{p50 / alone[0]:.1f}x / {p99 / alone[1]:.1f}x of XGBoost + autoencoder |"
        )
    for name, label in labels.items():
        share, gc_p50 = median(f"gc_{name}", 0), median(f"gc_{name}", 1)
        print(
            f"| one event, {label}: events with a garbage collection in them | {share:.1%}"
            + (f", p50 {gc_p50:.3f} ms" if share else "")
            + " | |"
        )
    p50, p99 = median("score_event", 0), median("score_event", 1)
    print(
        f"| one event (`score_event`, a dict), p50 / p99 | {p50:.3f} / {p99:.3f} ms | "
        f"{p50 / alone[0]:.1f}x / {p99 / alone[1]:.1f}x |"
    )


if __name__ == "__main__":
    main()
