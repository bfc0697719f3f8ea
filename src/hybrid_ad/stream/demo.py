"""`make stream-demo`: the stream processor end to end on a private Redis, in about a minute.

Simulates a small streaming-service log and trains a small model on it (both kept in OUT and
reused), starts a private redis-server, publishes the log, scores it with `hybrid-ad stream
--until-idle`, prints an alert summary and stops the server. Every step is the command line a
user would type; they are printed as they run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from hybrid_ad.stream.checkpoint import FILE_NAME
from hybrid_ad.stream.connection import connect
from hybrid_ad.stream.server import private_redis

SMALL_MODEL = [
    "--set", "autoencoder.max_epochs=5", "--set", "autoencoder.hidden_layers=[32]",
    "--set", "autoencoder.latent_dim=8", "--set", "judge.n_estimators=80",
    "--set", "judge.threads=1", "--set", "evaluation.report=false",
    "--set", "evaluation.precision_at_k=50",
]  # fmt: skip


def hybrid_ad(*args: str) -> None:
    """Run one `hybrid-ad` command, printed first; stop the demo if it fails."""
    print(f"$ hybrid-ad {shlex.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "hybrid_ad.cli", *args])
    if done.returncode != 0:
        raise SystemExit(done.returncode)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/stream-demo"))
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--model", type=Path, help="Use this model (and --events) instead.")
    parser.add_argument("--events", type=Path, help="Event file to publish.")
    args = parser.parse_args(argv)
    out: Path = args.out
    events = args.events or out / "events.parquet"
    model = args.model or out / "model"
    if args.model is None and not (model / "manifest.json").exists():
        if not events.exists():
            hybrid_ad(
                "simulate", "--out", str(events), "--accounts", str(args.accounts),
                "--days", str(args.days), "--seed", "7", "--quiet",
            )  # fmt: skip
        hybrid_ad(
            "run", "--config", "config/streaming_service.yaml", "--data", str(events),
            "--out", str(out), *SMALL_MODEL, "--quiet",
        )  # fmt: skip
    checkpoint = out / "checkpoint"
    (checkpoint / FILE_NAME).unlink(missing_ok=True)  # a fresh server: a fresh position
    with private_redis(out / "redis") as url:
        print(f"private redis-server at {url}", flush=True)
        hybrid_ad("publish", "--input", str(events), "--redis", url, "--stream", "events")
        hybrid_ad(
            "stream", "--model", str(model), "--redis", url, "--stream", "events",
            "--group", "demo", "--consumer", "demo-1", "--alerts", "alerts",
            "--dead-letters", "dead-letters", "--checkpoint", str(checkpoint),
            "--batch", "500", "--until-idle", "1",
        )  # fmt: skip
        print_summary(url)


def print_summary(url: str) -> None:
    """Alerts per rule and the five highest-scoring alerts, read back from Redis."""
    client = connect(url)
    alerts = [fields for _, fields in client.xrange("alerts")]
    scored = client.xlen("events")
    print(f"\n{len(alerts):,} alerts for {scored:,} events; ", end="")
    print(f"{client.xlen('dead-letters'):,} dead letters")
    by_rule: dict[str, int] = {}
    for alert in alerts:
        for hit in json.loads(alert["reasons"]).get("rules", []):
            by_rule[hit["rule"]] = by_rule.get(hit["rule"], 0) + 1
    for rule, count in sorted(by_rule.items(), key=lambda item: -item[1]):
        print(f"  {count:6,}  alerts with rule {rule}")
    print("highest scores:")
    for alert in sorted(alerts, key=lambda a: -float(a["score"]))[:5]:
        judge = json.loads(alert["reasons"]).get("judge", [])
        top = judge[0]["input"] if judge else "-"
        print(f"  {alert['event_id']}  score {float(alert['score']):.3f}  top input: {top}")


if __name__ == "__main__":
    main()
