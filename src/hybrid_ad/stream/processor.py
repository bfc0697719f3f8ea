"""`hybrid-ad stream`: score a Redis stream with a consumer group, exactly once across crashes.

The design (README, "Real time: Redis Streams"):

- **One owner.** A processor holds a lease on its stream and group (a Redis key with an
  expiry, renewed every loop). A restart under the same consumer name takes it over at once;
  another consumer waits until the lease of the old one has expired (it is dead), then claims
  its pending entries (`XAUTOCLAIM`). Entries are therefore applied in stream order.
- **Outputs and their mark in one transaction.** Each micro-batch's alerts, scores and dead
  letters are written in one `MULTI`/`EXEC` together with the id of the batch's last entry
  (the *written mark*). Either all of it is in Redis, or none of it.
- **State and position in one file.** Every `--checkpoint-every` events the scorer's state and
  the id of the last entry it has applied are written to `DIR/stream.checkpoint` atomically;
  only then are the entries up to that id acknowledged (`XACK`).
- **Recovery.** On start the checkpoint is restored, and the pending entries after its id
  (read but not acknowledged, the processor's own and a dead consumer's) are scored again, in
  order, from the checkpointed state; outputs for entries up to the written mark are not
  written again. So every event updates the state once and every alert is written once.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from hybrid_ad.artifacts import MANIFEST, MANIFEST_SHA256
from hybrid_ad.core.detector import Detector
from hybrid_ad.core.live import ScoredBatch
from hybrid_ad.core.scoring import Contributions
from hybrid_ad.data import EVENT_ID
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stream.checkpoint import Checkpoint, load_checkpoint
from hybrid_ad.stream.connection import StreamError, first_line, later, parse_id, redis_errors

if TYPE_CHECKING:
    import redis

log = logging.getLogger("hybrid_ad.stream")

Entry = tuple[str, dict[str, str]]

SCORE_FIELDS = ("rule_score", "reconstruction_error", "histogram_score", "rules_hit", "clipped")

_RENEW_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class StreamOptions:
    """The `hybrid-ad stream` flags, checked."""

    stream: str
    group: str
    consumer: str
    alerts: str
    dead_letters: str
    checkpoint_dir: Path
    scores: str | None = None
    batch: int = 500
    checkpoint_every: int = 100_000
    until_idle: float | None = None
    lease: float = 10.0
    log_every: float = 10.0
    contributions: Contributions = "approximate"
    """How the alerts' reasons weigh the judge's inputs (`hybrid_ad.core.scoring`)."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= 100_000:
            raise InputError(f"--batch: expected 1 to 100,000 entries, got {self.batch}")
        if self.checkpoint_every < 1:
            raise InputError(f"--checkpoint-every: expected >= 1, got {self.checkpoint_every}")
        if self.until_idle is not None and not self.until_idle >= 0:
            raise InputError(f"--until-idle: expected seconds >= 0, got {self.until_idle}")
        if not 0.5 <= self.lease <= 3600:
            raise InputError(f"--lease: expected 0.5 to 3600 seconds, got {self.lease}")
        names = {"--alerts": self.alerts, "--dead-letters": self.dead_letters}
        if self.scores is not None:
            names["--scores"] = self.scores
        for flag, name in names.items():
            if name == self.stream:
                raise InputError(f"{flag} {name}: is the input stream; write elsewhere")
        if len(set(names.values())) != len(names):
            raise InputError("--alerts, --scores and --dead-letters must be different streams")

    @property
    def written_key(self) -> str:
        return f"hybrid-ad:written:{self.stream}:{self.group}"

    @property
    def lease_key(self) -> str:
        return f"hybrid-ad:owner:{self.stream}:{self.group}"


@dataclass
class StreamSummary:
    """What one run of the processor did (the checkpoint keeps the lifetime counts)."""

    events: int = 0
    alerts: int = 0
    dead_letters: int = 0
    replayed: int = 0
    claimed: int = 0
    checkpoints: int = 0
    checkpoint_seconds: float = 0.0
    seconds: float = 0.0
    lifetime_events: int = 0
    lifetime_alerts: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def model_version(model_dir: Path) -> str:
    """The model's identity in alerts and checkpoints: its manifest checksum, 16 hex digits."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
        return str(manifest[MANIFEST_SHA256])[:16]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{model_dir}: cannot read the model's manifest ({exc})") from None


class StreamProcessor:
    """Scores a stream through `live.score_many`, one micro-batch at a time (see module doc)."""

    def __init__(
        self,
        detector: Detector,
        version: str,
        client: redis.Redis,
        options: StreamOptions,
        on_batch: Callable[[StreamSummary], None] | None = None,
    ) -> None:
        self.detector = detector
        self.version = version
        self.client = client
        self.options = options
        self.summary = StreamSummary()
        self.stopping = False
        self._on_batch = on_batch
        self._renew = client.register_script(_RENEW_LEASE)
        self._lease_ms = int(options.lease * 1000)
        saved = load_checkpoint(options.checkpoint_dir)
        if saved is not None:
            self._check_matches(saved)
        self._saved = saved is not None
        self.live = detector.live(state=None if saved is None else saved.state)
        self.applied: str | None = None if saved is None else saved.last_id
        self.fields: list[str] | None = None if saved is None else saved.fields
        self._lifetime = (
            (0, 0, 0) if saved is None else (saved.events, saved.alerts, saved.dead_letters)
        )
        self._written: str | None = None
        self._unacked: list[str] = []
        self._since_checkpoint = 0
        self._metrics: Callable[[StreamSummary, int | None], None] | None = None
        self._known = frozenset(self.fields or ())
        self._renewed = -math.inf

    # -- public ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, checkpoint, acknowledge and return (SIGTERM)."""
        self.stopping = True

    def serve_metrics(self, port: int) -> None:
        """Prometheus counters and the lag on `port` (prometheus-client, imported here)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        registry = CollectorRegistry()  # its own: several processors may share a process
        labels = ["stream"]
        events = Counter("hybrid_ad_stream_events", "Entries scored", labels, registry=registry)
        alerts = Counter("hybrid_ad_stream_alerts", "Alerts written", labels, registry=registry)
        dead = Counter(
            "hybrid_ad_stream_dead_letters",
            "Entries sent to dead letters",
            labels,
            registry=registry,
        )
        lag = Gauge(
            "hybrid_ad_stream_lag", "Entries in the stream not yet read", labels, registry=registry
        )
        seen = [0, 0, 0]
        name = self.options.stream

        def update(summary: StreamSummary, current_lag: int | None) -> None:
            now = (summary.events, summary.alerts, summary.dead_letters)
            for counter, before, after in zip((events, alerts, dead), seen, now, strict=True):
                counter.labels(name).inc(after - before)
            seen[:] = now
            if current_lag is not None:
                lag.labels(name).set(current_lag)

        start_http_server(port, registry=registry)
        self._metrics = update

    def run(self) -> StreamSummary:
        """Recover, then score new entries until stopped or idle for `--until-idle` seconds."""
        started = time.perf_counter()
        try:
            self._acquire_lease()
            try:
                self._ensure_group()
                self._written = self.client.get(self.options.written_key)
                self._recover()
                self._consume(started)
                self._checkpoint()
                if self._metrics is not None:
                    self._metrics(self.summary, self._lag())
            finally:
                self._release_lease()
        except redis_errors() as exc:
            raise StreamError(f"redis: {first_line(exc)}") from None
        self.summary.seconds = time.perf_counter() - started
        events, alerts, _ = self._lifetime
        self.summary.lifetime_events, self.summary.lifetime_alerts = events, alerts
        return self.summary

    # -- ownership and recovery ------------------------------------------------------------------

    def _check_matches(self, saved: Checkpoint) -> None:
        where = self.options.checkpoint_dir
        if (saved.stream, saved.group) != (self.options.stream, self.options.group):
            raise InputError(
                f"--checkpoint {where}: holds stream {saved.stream!r} group {saved.group!r}, not "
                f"stream {self.options.stream!r} group {self.options.group!r}"
            )
        if saved.model_version != self.version:
            raise InputError(
                f"--checkpoint {where}: was written with model {saved.model_version}, not "
                f"{self.version}; a new model starts with a new --checkpoint and --group"
            )

    def _acquire_lease(self) -> None:
        key, me = self.options.lease_key, self.options.consumer
        announced = False
        while True:
            if self.client.set(key, me, nx=True, px=self._lease_ms) or self._renew(
                keys=[key], args=[me, self._lease_ms]
            ):  # free, or held under this name by a previous life of this processor
                self._renewed = time.monotonic()
                return
            if not announced:
                holder = self.client.get(key)
                log.info("waiting for consumer %s's lease on %s to expire", holder, key)
                announced = True
            if self.stopping:
                raise StreamError(f"stopped while consumer {self.client.get(key)} held {key}")
            time.sleep(0.2)

    def _keep_lease(self) -> None:
        """Renew the lease once a third of it has passed; taken again if it lapsed and nobody
        else took it meanwhile, else stop before writing anything more."""
        if time.monotonic() - self._renewed < self.options.lease / 3:
            return
        key, me = self.options.lease_key, self.options.consumer
        if not self._renew(keys=[key], args=[me, self._lease_ms]) and not self.client.set(
            key, me, nx=True, px=self._lease_ms
        ):
            raise StreamError(
                f"consumer {self.client.get(key)} took over {key} (this one was paused for "
                f"longer than --lease); stopping without writing"
            )
        self._renewed = time.monotonic()

    def _release_lease(self) -> None:
        key = self.options.lease_key
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            if pipe.get(key) == self.options.consumer:
                pipe.multi()
                pipe.delete(key)
                pipe.execute()

    def _ensure_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(
                self.options.stream, self.options.group, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _recover(self) -> None:
        """Score again, from the checkpoint, the entries read but not acknowledged."""
        pending = dict(self._own_pending())
        claimed = dict(self._claim_dead())
        self.summary.claimed = len(claimed)
        pending.update(claimed)
        ordered = sorted(pending.items(), key=lambda item: parse_id(item[0]))
        covered = [entry_id for entry_id, _ in ordered if not later(entry_id, self.applied)]
        if covered:  # in the checkpoint already: it was written, then the process died
            self._ack(covered)
        todo = [(entry_id, fields) for entry_id, fields in ordered if later(entry_id, self.applied)]
        self.summary.replayed = len(todo)
        if todo:
            log.info("replaying %d pending entries after checkpoint %s", len(todo), self.applied)
        for start in range(0, len(todo), self.options.batch):
            self._process(todo[start : start + self.options.batch])

    def _own_pending(self) -> Iterator[Entry]:
        cursor = "0"
        while True:
            response = self.client.xreadgroup(
                self.options.group,
                self.options.consumer,
                {self.options.stream: cursor},
                count=10_000,
            )
            entries = _entries(response)
            if not entries:
                return
            yield from entries
            cursor = entries[-1][0]

    def _claim_dead(self) -> Iterator[Entry]:
        """Other consumers' pending entries: theirs is a dead lease, so min-idle 0 is safe."""
        cursor = "0-0"
        while True:
            response = self.client.xautoclaim(
                self.options.stream,
                self.options.group,
                self.options.consumer,
                min_idle_time=0,
                start_id=cursor,
                count=10_000,
            )
            cursor, entries = response[0], response[1]
            for entry_id, fields in entries:
                yield entry_id, fields or {}
            deleted = response[2] if len(response) > 2 else []
            if deleted:
                self._ack(list(deleted))  # trimmed away before anyone scored them
            if cursor == "0-0":
                return

    # -- the loop --------------------------------------------------------------------------------

    def _consume(self, started: float) -> None:
        options = self.options
        block = (
            1000
            if options.until_idle is None
            else max(1, min(1000, int(options.until_idle * 1000)))
        )
        idle_since = time.monotonic()
        next_log = time.monotonic() + options.log_every
        while not self.stopping:
            self._keep_lease()
            response = self.client.xreadgroup(
                options.group,
                options.consumer,
                {options.stream: ">"},
                count=options.batch,
                block=block,
            )
            entries = _entries(response)
            if entries:
                self._process(entries)
                idle_since = time.monotonic()
            elif (
                options.until_idle is not None
                and time.monotonic() - idle_since >= options.until_idle
            ):
                return
            if time.monotonic() >= next_log or self._metrics is not None:
                self._report(started, time.monotonic() >= next_log)
                if time.monotonic() >= next_log:
                    next_log = time.monotonic() + options.log_every

    def _report(self, started: float, to_log: bool) -> None:
        lag = self._lag()
        if self._metrics is not None:
            self._metrics(self.summary, lag)
        if to_log:
            elapsed = max(time.perf_counter() - started, 1e-9)
            log.info(
                "%s: %d events (%.0f/s), %d alerts, %d dead letters, lag %s",
                self.options.stream,
                self.summary.events,
                self.summary.events / elapsed,
                self.summary.alerts,
                self.summary.dead_letters,
                "unknown" if lag is None else lag,
            )

    def _lag(self) -> int | None:
        """Entries of the stream the group has not read yet (Redis 7's XINFO GROUPS lag)."""
        for group in self.client.xinfo_groups(self.options.stream):
            if group.get("name") == self.options.group:
                lag = group.get("lag")
                return None if lag is None else int(lag)
        return None

    def _process(self, entries: list[Entry]) -> None:
        """Score one micro-batch (in stream order), write its outputs, checkpoint when due."""
        options = self.options
        dead: list[tuple[str, dict[str, str], str]] = []
        accepted: list[Entry] = []
        for entry_id, fields in entries:
            problem = self._field_problem(fields)
            if problem is None:
                accepted.append((entry_id, fields))
            else:
                dead.append((entry_id, fields, problem))
        alerts: list[tuple[str, dict[str, str]]] = []
        scores: list[tuple[str, dict[str, str]]] = []
        if accepted:
            assert self.fields is not None
            columns = {name: [fields.get(name) for _, fields in accepted] for name in self.fields}
            scored = self.live.score_many(
                columns, explain="alerts", contributions=self.options.contributions
            )
            for letter in scored.dead_letters:
                assert letter.position is not None
                entry_id, fields = accepted[letter.position]
                dead.append((entry_id, fields, letter.reason))
            alerts, scores = self._outputs(scored, accepted)
        self._keep_lease()
        self._write(entries[-1][0], alerts, scores, dead)
        self.applied = entries[-1][0]
        self._unacked += [entry_id for entry_id, _ in entries]
        self.summary.events += len(entries)
        self.summary.alerts += len(alerts)
        self.summary.dead_letters += len(dead)
        events, n_alerts, n_dead = self._lifetime
        self._lifetime = (events + len(entries), n_alerts + len(alerts), n_dead + len(dead))
        self._since_checkpoint += len(entries)
        if self._since_checkpoint >= options.checkpoint_every:
            self._checkpoint()
        if self._on_batch is not None:
            self._on_batch(self.summary)

    def _field_problem(self, fields: dict[str, str]) -> str | None:
        if not fields:
            return "the entry has no fields (it was deleted from the stream)"
        if self.fields is None:
            self.fields = sorted(fields)  # the stream's columns: those of its first entry
            self._known = frozenset(self.fields)
            return None
        if fields.keys() <= self._known:
            return None
        unknown = [name for name in fields if name not in self._known]
        if unknown:
            return (
                f"unknown field {unknown[0]!r} (the stream's fields are {', '.join(self.fields)})"
            )
        return None

    def _outputs(
        self, scored: ScoredBatch, accepted: list[Entry]
    ) -> tuple[list[tuple[str, dict[str, str]]], list[tuple[str, dict[str, str]]]]:
        """The alerts' and the scores' entries, from the batch's columns (no DataFrame)."""
        columns = scored.columns
        positions = scored.positions.tolist()
        ids = [str(key) for key in columns[EVENT_ID].tolist()]
        score = columns["score"].tolist()
        alert = columns["alert"].tolist()
        threshold = columns["threshold"].tolist()
        reasons = [text if isinstance(text, str) else "" for text in columns["reasons"].tolist()]
        alerts = []
        for i, flagged in enumerate(alert):
            if flagged:
                entry_id = accepted[positions[i]][0]
                alerts.append(
                    (
                        entry_id,
                        {
                            EVENT_ID: ids[i],
                            "score": repr(float(score[i])),
                            "threshold": repr(float(threshold[i])),
                            "reasons": reasons[i],
                            "model_version": self.version,
                            "entry_id": entry_id,
                        },
                    )
                )
        scores = []
        if self.options.scores is not None:
            extra = {name: columns[name].tolist() for name in SCORE_FIELDS}
            for i in range(len(positions)):
                entry_id = accepted[positions[i]][0]
                row = {
                    EVENT_ID: ids[i],
                    "score": repr(float(score[i])),
                    "alert": "1" if alert[i] else "0",
                    "threshold": repr(float(threshold[i])),
                    "reasons": reasons[i],
                    "model_version": self.version,
                    "entry_id": entry_id,
                }
                row.update({name: _text(values[i]) for name, values in extra.items()})
                scores.append((entry_id, row))
        return alerts, scores

    def _write(
        self,
        last_id: str,
        alerts: list[tuple[str, dict[str, str]]],
        scores: list[tuple[str, dict[str, str]]],
        dead: list[tuple[str, dict[str, str], str]],
    ) -> None:
        """The batch's outputs and the written mark in one MULTI/EXEC, minus what a previous
        life of this processor wrote already (entries up to the mark)."""
        options = self.options
        written = self._written
        with self.client.pipeline(transaction=True) as pipe:
            for entry_id, fields in alerts:
                if later(entry_id, written):
                    pipe.xadd(options.alerts, fields)
            if options.scores is not None:
                for entry_id, fields in scores:
                    if later(entry_id, written):
                        pipe.xadd(options.scores, fields)
            for entry_id, fields, reason in sorted(dead, key=lambda item: parse_id(item[0])):
                if later(entry_id, written):
                    letter = {
                        "reason": reason,
                        "stream": options.stream,
                        "entry_id": entry_id,
                        "fields": json.dumps(fields, ensure_ascii=False, sort_keys=True),
                        "model_version": self.version,
                    }
                    pipe.xadd(options.dead_letters, letter)
            if later(last_id, written):
                pipe.set(options.written_key, last_id)
                self._written = last_id
            pipe.execute()

    def _checkpoint(self) -> None:
        """State and position to the file (atomically), then acknowledge what it covers."""
        if self._saved and not self._unacked and self._since_checkpoint == 0:
            return  # nothing new since the checkpoint on disk
        began = time.perf_counter()
        events, alerts, dead = self._lifetime
        Checkpoint(
            stream=self.options.stream,
            group=self.options.group,
            model_version=self.version,
            last_id=self.applied,
            state=self.live.checkpoint(),
            fields=self.fields,
            events=events,
            alerts=alerts,
            dead_letters=dead,
        ).save(self.options.checkpoint_dir)
        self._saved = True
        self.summary.checkpoints += 1
        self._since_checkpoint = 0
        self._ack(self._unacked)
        self._unacked = []
        self.summary.checkpoint_seconds += time.perf_counter() - began

    def _ack(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 10_000):
            self.client.xack(self.options.stream, self.options.group, *ids[start : start + 10_000])


@contextmanager
def stop_on_sigterm(processor: StreamProcessor) -> Iterator[None]:
    """SIGTERM (and SIGINT) ask the processor to finish its batch and stop cleanly."""

    def handler(signum: int, frame: FrameType | None) -> None:
        processor.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _entries(response: Any) -> list[Entry]:
    """XREADGROUP's answer for one stream as (id, fields) pairs; deleted entries have {}."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3
        streams = list(response.values())
        items = streams[0][0] if streams and streams[0] else []
    else:
        items = response[0][1]
    return [(entry_id, fields or {}) for entry_id, fields in items]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)
