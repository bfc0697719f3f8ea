"""Load benchmark of `hybrid-ad serve` on loopback: latency at a fixed rate, batch throughput,
cold start, each next to an in-process baseline (`score_many` on the same events) measured in
the same run.

Run `make streaming` first (it writes the model and the events), then:

    .venv/bin/python benchmarks/bench_service.py [--runs 3] [--rate 300] [--seconds 60]
        [--reasons default|all|alerts|none] [--contributions default|approximate|exact]

Per run: a fresh `hybrid-ad serve` process (its `--state` carried over from the previous run,
so from the second run on the cold start includes restoring a state), then

1. one event per request, sent open-loop at `--rate` requests/s for `--seconds` by a bounded
   asyncio client (`Connections`: raw HTTP/1.1 keep-alive, at most `--in-flight` requests and
   connections outstanding); latency from the moment each request was due (so a late send
   counts) and from the actual send; sends more than 1 ms late are counted (a client starved
   of CPU shows there);
2. batches of `--batch` events, `--clients` concurrent clients, for `--batch-seconds`;
3. the baseline: `LiveScorer.score_many` in this process, on one event and on batches of the
   same size, from the same events, with the same reasons.

The client and the server share the machine's cores, so the CPU each used per request (the
server's from /proc, all of it and its event loop's thread alone, the client's own) is
printed with the wall-clock figures, and the load average at the start, per run and at the
end: on a busy machine the CPU ratios to the baseline are the comparable figures. Events are
the simulated log's last part (after the model's training and validation data), handed out in
time order over the whole benchmark; when the part is used up it starts again shifted past its
end. Concurrent requests reach the server slightly out of order, and the streaming model
allows no lateness (an event older than the newest seen is a dead letter), so the server gets
a copy of the model with `allowed_lateness` = `--lateness` (a live-engine setting: nothing is
refitted). Dead letters are counted apart from errors. Each phase is bounded in count and in
time: requests a slow server left unsent are reported. Figures are printed as Markdown,
medians over the runs last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import uvloop  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADERS = {"content-type": "application/json"}
SCORE = "/v1/score"
"""Set from `--reasons` in `main`."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Timeline:
    """The log's part handed out in time order, shifted by its span each time it wraps."""

    def __init__(self, events: pd.DataFrame) -> None:
        self.events = events.reset_index(drop=True)
        times = self.events["timestamp"]
        self.span = times.iloc[-1] - times.iloc[0] + pd.Timedelta(days=1)
        self.cursor = 0
        self.cycle = 0

    def take(self, n: int) -> pd.DataFrame:
        parts = []
        while n > 0:
            part = self.events.iloc[self.cursor : self.cursor + n].copy()
            part["timestamp"] = part["timestamp"] + self.span * self.cycle
            parts.append(part)
            n -= len(part)
            self.cursor += len(part)
            if self.cursor == len(self.events):
                self.cursor, self.cycle = 0, self.cycle + 1
        return pd.concat(parts, ignore_index=True)


def _bodies(events: pd.DataFrame, size: int) -> list[bytes]:
    frame = events.copy()
    frame["timestamp"] = frame["timestamp"].map(lambda value: value.isoformat())
    records = frame.to_dict("records")
    if size == 1:
        return [json.dumps(record).encode() for record in records]
    return [json.dumps(records[i : i + size]).encode() for i in range(0, len(records), size)]


def _start(model: Path, state: Path, log: Path) -> tuple[subprocess.Popen, str, float, float]:
    """A server process; (process, url, seconds from spawn to ready, its own load time)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    spawned = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "hybrid_ad.cli", "serve", "--model", str(model),
         "--port", str(port), "--state", str(state)],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    to_ready = time.perf_counter() - spawned
    found = re.search(r"ready in ([0-9.]+) s", log.read_text())
    return process, url, to_ready, float(found.group(1)) if found else float("nan")


class Connections:
    """A bounded pool of keep-alive HTTP/1.1 connections: a lean client (one write, reads of
    the header and the `content-length` body), a few microseconds of CPU per request where
    httpx takes about a millisecond; the client shares the two cores with the server."""

    def __init__(self, url: str, size: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.size = host, int(port), size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.opened: list[asyncio.StreamWriter] = []

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """(status, body); a connection is opened when none is idle, up to `size`."""
        if self.idle.empty() and len(self.opened) < self.size:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.opened.append(writer)
        else:
            reader, writer = await self.idle.get()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        async with asyncio.timeout(timeout):
            header = await reader.readuntil(b"\r\n\r\n")
            status = int(header[9:12])
            found = re.search(rb"content-length: *([0-9]+)", header, re.IGNORECASE)
            content = await reader.readexactly(int(found.group(1))) if found else b""
        self.idle.put_nowait((reader, writer))
        return status, content

    async def close(self) -> None:
        for writer in self.opened:
            writer.close()


async def _paced(url: str, bodies: list[bytes], rate: float, seconds: float, in_flight: int):
    """Open loop: request i is due at start + i / rate; latencies in seconds."""
    n = min(len(bodies), int(rate * seconds))
    pool = Connections(url, in_flight)
    gate = asyncio.Semaphore(in_flight)
    from_due, from_send, errors, dead = [], [], 0, 0
    loop = asyncio.get_running_loop()

    async def one(body: bytes, due: float) -> None:
        nonlocal errors, dead
        try:
            sent = loop.time()
            status, content = await pool.post(SCORE, body, 30)
            done = loop.time()
            if status != 200:
                errors += 1
                print(f"answer {status}: {content[:200]!r}", file=sys.stderr)
            dead += b'"error"' in content
            from_due.append(done - due)
            from_send.append(done - sent)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            errors += 1
            print(f"request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            gate.release()

    tasks = []
    start = loop.time() + 0.1
    give_up = start + seconds * 1.25  # bounded in time: a slow server gets the rest unsent
    late_sends = 0
    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await gate.acquire()
        if loop.time() > give_up:
            gate.release()
            break
        late_sends += loop.time() - due > 0.001
        tasks.append(asyncio.create_task(one(bodies[i], due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    await pool.close()
    return {
        "due": np.array(from_due),
        "sent": np.array(from_send),
        "errors": errors,
        "dead": dead,
        "achieved": len(tasks) / elapsed,
        "unsent": n - len(tasks),
        "late_sends": late_sends,
    }


async def _batches(url: str, bodies: list[bytes], size: int, clients: int, seconds: float):
    """Closed loop: `clients` clients send the batches in turn, each as soon as its last one
    was answered, until the batches or `seconds` run out; (events/s, events, errors, dead
    letters)."""
    errors, events, dead = 0, 0, 0
    loop = asyncio.get_running_loop()
    queue = iter(bodies)
    end = loop.time() + seconds
    pool = Connections(url, clients)

    async def worker() -> None:
        nonlocal errors, events, dead
        for body in queue:
            if loop.time() > end:
                break
            status, content = await pool.post(SCORE, body, 60)
            if status == 200:
                events += size
                dead += content.count(b'"error"')
            else:
                errors += 1
                print(f"answer {status}: {content[:200]!r}", file=sys.stderr)

    started = loop.time()
    await asyncio.gather(*(worker() for _ in range(clients)))
    rate = events / (loop.time() - started)
    await pool.close()
    return rate, events, errors, dead


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds so far of a process, or of one of its threads (Linux /proc;
    the main thread's id is the process id: there the server runs its event loop)."""
    where = f"/proc/{pid}" if thread is None else f"/proc/{pid}/task/{thread}"
    fields = Path(f"{where}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stage_means(metrics: str) -> dict[str, float]:
    """From the server's /metrics: mean time per stage (ms) and requests per micro-batch."""

    def total(name: str, labels: str = "") -> float:
        found = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+-]+)$", metrics, re.MULTILINE)
        return float(found.group(1)) if found else float("nan")

    means = {}
    for stage in ("validate", "queue", "score", "respond"):
        labels = f'{{stage="{stage}"}}'
        count = total("hybrid_ad_stage_seconds_count", labels)
        means[f"server_{stage}_ms"] = total("hybrid_ad_stage_seconds_sum", labels) / count * 1e3
    batches = total("hybrid_ad_coalesced_requests_count")
    means["requests_per_microbatch"] = total("hybrid_ad_coalesced_requests_sum") / batches
    return means


def _served_copy(model: Path, lateness: str, target: Path) -> Path:
    """The model with another `allowed_lateness` (a live-engine setting; nothing refitted)."""
    from hybrid_ad.core.detector import Detector

    detector = Detector.load(model)
    features = detector.config.features
    if features.behavioural is not None:
        behavioural = features.behavioural.model_copy(update={"allowed_lateness": lateness})
        detector.config = detector.config.model_copy(
            update={"features": features.model_copy(update={"behavioural": behavioural})}
        )
    detector.save(target)
    return target


def _machine() -> str:
    """The load and the cores, printed with the figures (the machine is often shared)."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"load average {load} on {os.cpu_count()} cores"


def _baseline(
    model: Path,
    events: pd.DataFrame,
    size: int,
    singles: int,
    explain: str,
    contributions: str,
) -> dict[str, float]:
    """In-process `score_many` of the same events: one event, then batches of `size`."""
    from hybrid_ad.core.detector import Detector
    from hybrid_ad.service.schema import EventSchema

    detector = Detector.load(model)
    schema = EventSchema(detector)
    live = detector.live()
    records = [schema.parse(body)[0][0] for body in _bodies(events.iloc[:singles], 1)]
    latencies = []
    cpu = time.process_time()
    for record in records:
        started = time.perf_counter()
        live.score_many(schema.columns_of([record]), explain=explain, contributions=contributions)
        latencies.append(time.perf_counter() - started)
    single_cpu = (time.process_time() - cpu) / len(records)
    batches = [schema.columns_of(schema.parse(body)[0]) for body in _bodies(events, size)]
    started, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        live.score_many(batch, explain=explain, contributions=contributions)
    rate = len(batches) * size / (time.perf_counter() - started)
    batch_cpu = (time.process_time() - cpu) / (len(batches) * size)
    p50, p99 = np.percentile(latencies[20:], [50, 99])
    return {
        "single_p50_ms": p50 * 1e3,
        "single_p99_ms": p99 * 1e3,
        "single_cpu_ms": single_cpu * 1e3,
        "batch_events_s": rate,
        "batch_cpu_us_per_event": batch_cpu * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "artifacts/streaming/model")
    parser.add_argument("--events", type=Path, default=REPO / "data/simulated/streaming.parquet")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batch-events", type=int, default=200_000)
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument(
        "--lateness",
        default="1h",
        help="allowed_lateness of the served copy of the model (concurrent requests arrive "
        "out of order; the streaming model allows none)",
    )
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument(
        "--reasons",
        default="default",
        choices=["default", "all", "alerts", "none"],
        help="the `reasons` query parameter (default: none sent, the server's default)",
    )
    parser.add_argument(
        "--contributions",
        default="default",
        choices=["default", "exact", "approximate"],
        help="the `contributions` query parameter (default: none sent, the server's default)",
    )
    parser.add_argument("--json", type=Path, help="Write every figure here as well.")
    args = parser.parse_args()
    from hybrid_ad.service.runtime import CONTRIBUTIONS, EXPLAIN

    global SCORE
    query = {"reasons": args.reasons, "contributions": args.contributions}
    query = {key: value for key, value in query.items() if value != "default"}
    SCORE = "/v1/score" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    explain = EXPLAIN if args.reasons == "default" else args.reasons
    contrib = CONTRIBUTIONS if args.contributions == "default" else args.contributions
    print(f"{SCORE}: reasons={explain}, contributions={contrib}; {_machine()}", flush=True)
    log_events = pd.read_parquet(args.events)
    tail = log_events.iloc[-int(len(log_events) * 0.2) :]  # the test part: after the model's data
    tail = tail.drop(columns=[c for c in ("is_anomaly", "anomaly_kind") if c in tail])
    per_run = int(args.rate * args.seconds)
    timeline = Timeline(tail)
    results: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench_service."))
    model = _served_copy(args.model, args.lateness, workdir / "model")
    state = workdir / "state"
    for run in range(args.runs):
        paced = _bodies(timeline.take(per_run), 1)
        batches = _bodies(timeline.take(args.batch_events), args.batch)
        log = workdir / f"server{run}.log"
        process, url, to_ready, load = _start(model, state, log)
        try:
            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            with runner:
                pid = process.pid
                server_cpu, client_cpu = _cpu_seconds(pid), time.process_time()
                loop_cpu = _cpu_seconds(pid, pid)
                single = runner.run(_paced(url, paced, args.rate, args.seconds, args.in_flight))
                server_single = _cpu_seconds(pid) - server_cpu
                loop_single = _cpu_seconds(pid, pid) - loop_cpu
                client_single = time.process_time() - client_cpu
                server_cpu, client_cpu = _cpu_seconds(pid), time.process_time()
                loop_cpu = _cpu_seconds(pid, pid)
                throughput, batch_events, batch_errors, batch_dead = runner.run(
                    _batches(url, batches, args.batch, args.clients, args.batch_seconds)
                )
                server_batch = _cpu_seconds(pid) - server_cpu
                loop_batch = _cpu_seconds(pid, pid) - loop_cpu
                client_batch = time.process_time() - client_cpu
            stages = _stage_means(httpx.get(f"{url}/metrics", timeout=30).text)
        finally:
            process.terminate()
            code = process.wait(timeout=120)
        base = _baseline(model, tail.iloc[: args.batch * 100], args.batch, 300, explain, contrib)
        due, sent = single["due"], single["sent"]
        result = {
            "run": run + 1,
            "load_average_1min": os.getloadavg()[0],
            "cold_start_s": to_ready,
            "server_load_s": load,
            "start_before_load_s": to_ready - load,
            "exit_code": code,
            "rate_achieved": single["achieved"],
            "requests": len(due),
            "unsent": single["unsent"],
            "sends_over_1ms_late": single["late_sends"],
            "errors": single["errors"],
            "dead_letters": single["dead"],
            "p50_ms": float(np.percentile(due, 50) * 1e3),
            "p99_ms": float(np.percentile(due, 99) * 1e3),
            "p99_from_send_ms": float(np.percentile(sent, 99) * 1e3),
            "max_ms": float(due.max() * 1e3),
            "server_cpu_ms_per_request": server_single / max(len(due), 1) * 1e3,
            "server_loop_cpu_ms_per_request": loop_single / max(len(due), 1) * 1e3,
            "client_cpu_ms_per_request": client_single / max(len(due), 1) * 1e3,
            "batch_events_s": throughput,
            "batch_events": batch_events,
            "batch_errors": batch_errors,
            "batch_dead_letters": batch_dead,
            "server_cpu_us_per_batch_event": server_batch / max(batch_events, 1) * 1e6,
            "server_loop_cpu_us_per_batch_event": loop_batch / max(batch_events, 1) * 1e6,
            "client_cpu_us_per_batch_event": client_batch / max(batch_events, 1) * 1e6,
            "baseline_single_p50_ms": base["single_p50_ms"],
            "baseline_single_p99_ms": base["single_p99_ms"],
            "baseline_single_cpu_ms": base["single_cpu_ms"],
            "baseline_batch_events_s": base["batch_events_s"],
            "baseline_cpu_us_per_batch_event": base["batch_cpu_us_per_event"],
        }
        result.update(stages)
        result["p99_ratio"] = result["p99_ms"] / base["single_p99_ms"]
        result["batch_ratio"] = throughput / base["batch_events_s"]
        result["server_cpu_ratio_single"] = (
            result["server_cpu_ms_per_request"] / base["single_cpu_ms"]
        )
        result["server_cpu_ratio_batch"] = (
            result["server_cpu_us_per_batch_event"] / base["batch_cpu_us_per_event"]
        )
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    columns = [key for key in results[0] if key != "run"]
    print("\n| figure | " + " | ".join(f"run {r['run']}" for r in results) + " | median |")
    print("|---|" + "---:|" * (len(results) + 1))
    for key in columns:
        values = [r[key] for r in results]
        cells = " | ".join(f"{v:,.2f}" for v in values)
        print(f"| {key} | {cells} | {float(np.median(values)):,.2f} |")
    print(f"\nafter the runs: {_machine()}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
