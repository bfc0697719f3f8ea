"""The served model and the one thread that scores with it.

Every use of the live scorer (scoring, checkpoints, the state handed to a reloaded model) runs
on one dedicated thread, in submission order: the behavioural state is never touched by two
threads, the per-event path stays single-threaded, and the event loop stays free to accept
requests. A reload loads and checks the new model on another thread, then swaps it in as one
job on the scoring thread: requests already queued or scoring finish on the old model, later
ones get the new one, and a model that fails any check is refused while the old one serves on.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrid_ad.artifacts import MANIFEST, sha256_bytes
from hybrid_ad.core.detector import Detector, require_judge
from hybrid_ad.core.live import LiveScorer, ScoredBatch
from hybrid_ad.core.scoring import Contributions, Explain
from hybrid_ad.errors import ArtifactError, HybridADError
from hybrid_ad.monitoring.drift import ReferenceProfile
from hybrid_ad.service.metrics import ServiceMetrics
from hybrid_ad.service.schema import EventSchema, RequestError
from hybrid_ad.service.state import StateDir

CHECKPOINT_SECONDS = 30.0
"""How often the state is checkpointed to `--state` while events arrive (and at shutdown)."""
VERSION_DIGITS = 12
MAX_COALESCED = 1000
"""Events in one micro-batch at most, over the requests coalesced into it."""
ANSWERED = ("event_id", "score", "alert", "reasons")
"""The `ScoredBatch` columns an answer carries (with the threshold and the model version)."""
EXPLAIN: Explain = "all"
"""Every answered event carries its reasons, in the JSON `hybrid-ad score` writes."""
CONTRIBUTIONS: Contributions = "approximate"
"""The judge's part of the reasons by default: XGBoost's path attribution, which like
TreeSHAP sums to the margin and ranks the inputs much alike, at a fraction of its cost
(exact TreeSHAP on every event ran batches of 100 at a 24th of the rate without reasons);
`?contributions=exact` gives the values `hybrid-ad score` writes."""


class ReloadRefused(Exception):
    """The new model failed a check; the one line says which. The old model serves on."""


@dataclass
class ServedModel:
    """A loaded model with its live scorer and request schema."""

    detector: Detector
    live: LiveScorer
    schema: EventSchema
    manifest: dict[str, Any]
    path: Path
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        """The manifest's checksum, shortened: it changes with any file of the model."""
        return str(self.manifest.get("manifest_sha256", ""))[:VERSION_DIGITS]

    def describe(self) -> dict[str, Any]:
        """`GET /v1/model`: what is served, from its manifest."""
        manifest = self.manifest
        config = json.dumps(manifest.get("config"), sort_keys=True, separators=(",", ":"))
        return {
            "version": self.version,
            "path": str(self.path),
            "manifest_sha256": manifest.get("manifest_sha256"),
            "config_sha256": manifest.get("config_sha256") or sha256_bytes(config.encode()),
            "data_sha256": manifest.get("data_sha256"),
            "package_version": manifest.get("package_version"),
            "format_version": manifest.get("format_version"),
            "threshold": self.detector.threshold_,
            "metrics": manifest.get("metrics"),
            "retrain": manifest.get("retrain"),
            "fields": self.schema.columns,
            "loaded_at_unix": self.loaded_at,
        }


@dataclass
class Pending:
    """A validated request waiting for the scorer."""

    events: list[dict[str, Any]]
    single: bool
    explain: Explain
    contributions: Contributions
    submitted: float
    answer: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True)
class Answer:
    """An HTTP answer built on the scoring thread: status and JSON body."""

    status: int
    body: bytes


class Runtime:
    """Owns the served model, the scoring thread and the `--state` directory."""

    def __init__(
        self, model_dir: Path, state_dir: StateDir | None, metrics: ServiceMetrics
    ) -> None:
        self.model_dir = model_dir
        self.state_dir = state_dir
        self.metrics = metrics
        self.current: ServedModel | None = None
        self.failure: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._reload_lock = asyncio.Lock()
        self._checkpoint_lock = asyncio.Lock()
        self._unsaved = 0
        self._last_events: list[dict[str, Any]] | None = None
        self._pending: asyncio.Queue[Pending] | None = None
        self._batcher: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    # -- start, reload, stop --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model and restore the state; on failure `failure` holds the one line.

        torch gets one thread, as the scorer: with its default (one per core) the second core
        spun for the autoencoder's small layers, 15 to 20 % more CPU per event in batches of
        100 and a fifth fewer events per second (measured with OMP_NUM_THREADS 2 against 1)."""
        torch.set_num_threads(1)
        try:
            detector, manifest, path = await asyncio.to_thread(self._load_model)
            state = self.state_dir.load() if self.state_dir is not None else None
            served = await self._on_scorer(self._open, detector, manifest, path, state)
        except (HybridADError, OSError) as exc:
            self.failure = _one_line(exc)
            return
        except Exception as exc:  # a bug: still one line, and the server exits
            self.failure = f"internal error while loading: {_one_line(exc) or type(exc).__name__}"
            return
        self.current = served
        self.metrics.served(served.version, None, _profile(detector))
        self.metrics.ready.set(1)

    async def reload(self) -> dict[str, Any]:
        """Load `--model` again (a symlink is followed anew), check it, swap it in."""
        async with self._reload_lock:
            old = self.current
            if old is None:
                raise ReloadRefused("the server is not ready yet")
            try:
                detector, manifest, path = await asyncio.to_thread(self._load_model)
                served = await self._on_scorer(self._swap, detector, manifest, path)
            except (HybridADError, ReloadRefused) as exc:
                self.metrics.reloads.labels("refused").inc()
                raise ReloadRefused(_one_line(exc)) from None
            self.metrics.served(served.version, old.version, _profile(detector))
            self.metrics.reloads.labels("swapped").inc()
            return {"status": "reloaded", "version": served.version, "previous": old.version}

    async def checkpoint(self, force: bool = False) -> bool:
        """Write the state to `--state` if events were scored since the last checkpoint."""
        if self.state_dir is None or self.current is None or not (force or self._unsaved):
            return False
        async with self._checkpoint_lock:
            started = time.perf_counter()
            state, info = await self._on_scorer(self._take_checkpoint)
            await asyncio.to_thread(self.state_dir.save, state, info)
            self.metrics.checkpoints.inc()
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        return True

    async def stop(self) -> None:
        """Last checkpoint, then the scoring thread ends and the state lock is released."""
        if self._batcher is not None:
            self._batcher.cancel()
        try:
            await self.checkpoint(force=True)
        finally:
            self._executor.shutdown(wait=True)
            if self.state_dir is not None:
                self.state_dir.close()

    # -- scoring --------------------------------------------------------------------------------

    async def score(
        self, body: bytes, explain: Explain = EXPLAIN, contributions: Contributions = CONTRIBUTIONS
    ) -> Answer:
        """Validate a request body against the served schema and queue it for the scorer."""
        served = self.current
        if served is None:
            return Answer(503, b'{"error":"not ready: the model is loading"}')
        started = time.perf_counter()
        try:
            events, single = served.schema.parse(body)
        except RequestError as exc:
            self.metrics.invalid.labels("validation").inc()
            payload = {"error": exc.error, "detail": exc.detail}
            return Answer(422, json.dumps(payload).encode())
        self.metrics.stage_seconds.labels("validate").observe(time.perf_counter() - started)
        request = Pending(events, single, explain, contributions, time.perf_counter())
        if self._pending is None:
            self._pending = asyncio.Queue()
            self._batcher = asyncio.create_task(self._coalesce())
        await self._pending.put(request)
        return await request.answer

    async def _coalesce(self) -> None:
        """Hand the queued requests to the scorer together: while one micro-batch scores, the
        requests arriving meanwhile wait, and go as the next one (consecutive requests with
        the same `explain` and `contributions`, up to `MAX_COALESCED` events). Order is kept:
        a micro-batch is scored as its requests would be one after the other."""
        assert self._pending is not None
        queue = self._pending
        carried: Pending | None = None
        while True:
            first = carried or await queue.get()
            carried = None
            group, size = [first], len(first.events)
            while not queue.empty():
                following = queue.get_nowait()
                if (
                    following.explain != first.explain
                    or following.contributions != first.contributions
                    or size + len(following.events) > MAX_COALESCED
                ):
                    carried = following
                    break
                group.append(following)
                size += len(following.events)
            try:
                answers = await self._on_scorer(self._score_group, group)
            except Exception as exc:  # a bug in one micro-batch must not stop the batcher
                for request in group:
                    if not request.answer.done():
                        request.answer.set_exception(exc)
                continue
            for request, answer in zip(group, answers, strict=True):
                if not request.answer.done():  # the client may have gone
                    request.answer.set_result(answer)

    def _score_group(self, group: list[Pending]) -> list[Answer]:
        started = time.perf_counter()
        for request in group:
            self.metrics.stage_seconds.labels("queue").observe(started - request.submitted)
        served = self.current
        assert served is not None
        events = [event for request in group for event in request.events]
        columns = served.schema.columns_of(events)
        scored = served.live.score_many(
            columns, explain=group[0].explain, contributions=group[0].contributions
        )
        scored_at = time.perf_counter()
        self.metrics.stage_seconds.labels("score").observe(scored_at - started)
        self.metrics.coalesced.observe(len(group))
        self._unsaved += len(events)
        self._last_events = group[-1].events
        self.metrics.scored(scored)
        answers, offset = [], 0
        for request in group:
            end = offset + len(request.events)
            answers.append(_answer(served, scored, offset, end, request.single))
            offset = end
        self.metrics.stage_seconds.labels("respond").observe(time.perf_counter() - scored_at)
        return answers

    # -- on the scoring thread ------------------------------------------------------------------

    def _open(
        self,
        detector: Detector,
        manifest: dict[str, Any],
        path: Path,
        state: bytes | None,
    ) -> ServedModel:
        try:
            live = detector.live(state=state)
        except HybridADError as exc:
            where = f"--state {self.state_dir.path}: " if self.state_dir and state else ""
            raise ArtifactError(f"{where}{_one_line(exc)}") from None
        schema = EventSchema(detector)
        live.score_many(
            schema.example(), remember=False, explain=EXPLAIN, contributions=CONTRIBUTIONS
        )
        return ServedModel(detector, live, schema, manifest, path)

    def _swap(self, detector: Detector, manifest: dict[str, Any], path: Path) -> ServedModel:
        old = self.current
        assert old is not None
        try:
            served = self._open(detector, manifest, path, old.live.checkpoint())
        except HybridADError as exc:
            raise ReloadRefused(
                f"{path}: the served behavioural state does not fit the new model "
                f"({_one_line(exc)})"
            ) from None
        if self._last_events is not None:
            try:  # validated by the old schema: a field the new one adds is missing
                last = served.schema.columns_of(self._last_events)
            except (TypeError, ValueError) as exc:
                raise ReloadRefused(
                    f"{path}: the new model cannot read the last request's events ({exc})"
                ) from None
            probe = served.live.score_many(last, remember=False, explain="none")
            if probe.dead_letters:
                raise ReloadRefused(
                    f"{path}: the new model cannot score the last request's events "
                    f"({probe.dead_letters[0].reason})"
                )
            if not np.isfinite(np.asarray(probe.columns["score"], np.float64)).all():
                raise ReloadRefused(f"{path}: the new model gives non-finite scores")
        self.current = served
        return served

    def _take_checkpoint(self) -> tuple[bytes, dict[str, Any]]:
        served = self.current
        assert served is not None
        state = served.live.checkpoint()
        self._unsaved = 0
        return state, {"model_version": served.version, "model_path": str(served.path)}

    # -- helpers ---------------------------------------------------------------------------------

    def _load_model(self) -> tuple[Detector, dict[str, Any], Path]:
        path = self.model_dir.resolve()  # one version, even if `current` is switched meanwhile
        before = _manifest(path)
        detector = Detector.load(path)
        require_judge(detector, path)
        if _manifest(path).get("manifest_sha256") != before.get("manifest_sha256"):
            raise ArtifactError(f"{path}: the model changed while it was loaded; try again")
        return detector, before, path

    async def _on_scorer(self, function: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)


def _manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not a saved model (no {MANIFEST})") from None
    except (OSError, ValueError):
        raise ArtifactError(f"{path / MANIFEST}: manifest is truncated or corrupt") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path / MANIFEST}: manifest is truncated or corrupt")
    return manifest


def _profile(detector: Detector) -> ReferenceProfile | None:
    return detector.drift_reference_.profile if detector.drift_reference_ else None


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _answer(served: ServedModel, scored: ScoredBatch, start: int, end: int, single: bool) -> Answer:
    """The answers to one request, events `start` to `end` of the micro-batch, in order, as
    JSON built from the scored columns (numpy, not a DataFrame: a frame per micro-batch cost
    more than the rest of the answer; the reasons are already JSON: spliced in, not parsed
    and dumped again)."""
    version = json.dumps(served.version)
    items: list[str | None] = [None] * (end - start)
    positions = scored.positions
    first, last = np.searchsorted(positions, [start, end])  # positions are in input order
    columns = {name: scored.columns[name][first:last] for name in ANSWERED}
    head = '{"event_id":'
    tail = f',"threshold":{_number(served.detector.threshold_)},"reasons":'
    for position, event_id, score, alert, reasons in zip(
        (positions[first:last] - start).tolist(),
        map(_json_text, columns["event_id"].tolist()),
        _numbers(columns["score"]),
        np.where(columns["alert"].astype(bool), ',"alert":true', ',"alert":false').tolist(),
        columns["reasons"].tolist(),
        strict=True,
    ):
        items[position] = (
            f'{head}{event_id},"score":{score}{alert}{tail}{reasons or "null"},'
            f'"model_version":{version}}}'
        )
    id_column = served.detector.config.data.event_id
    refused = False
    for letter in scored.dead_letters:
        if not start <= letter.position < end:
            continue
        refused = True
        event_id = letter.event.get(id_column) if id_column else None
        items[letter.position - start] = (
            f'{{"event_id":{json.dumps(event_id, default=str)},'
            f'"error":{json.dumps(letter.reason)},"model_version":{version}}}'
        )
    if single:
        status = 422 if refused else 200
        return Answer(status, (items[0] or "null").encode())
    return Answer(200, ("[" + ",".join(item or "null" for item in items) + "]").encode())


def _json_text(value: Any) -> str:
    """`json.dumps` of an event id: the C encoder for the usual string, without the wrapper."""
    return encode_basestring_ascii(value) if type(value) is str else json.dumps(value, default=str)


def _numbers(values: np.ndarray) -> list[str]:
    """`_number` of each value: repr of the float, null where it is not finite."""
    floats = np.asarray(values, dtype=np.float64)
    texts = list(map(float.__repr__, floats.tolist()))
    for at in np.flatnonzero(~np.isfinite(floats)).tolist():
        texts[at] = "null"
    return texts


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "null"
    return repr(float(value))
