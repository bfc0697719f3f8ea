"""`hybrid-ad serve` as a real process on a local port, driven over HTTP with httpx."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.core.detector import Detector
from hybrid_ad.service.app import MAX_BODY_BYTES

from .conftest import TOKEN, Trained, as_json


def _batch_scores(trained: Trained, tmp_path: Path, contributions: str) -> pd.DataFrame:
    output = tmp_path / f"scored_{contributions}.parquet"
    result = CliRunner().invoke(
        app,
        ["score", "--model", str(trained.model), "--input", str(trained.events_path),
         "--output", str(output), "--contributions", contributions, "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return pd.read_parquet(output)


EXACT = {"reasons": "all", "contributions": "exact"}
"""The reasons `hybrid-ad score` writes by default: every event, TreeSHAP (the service's
default is every event with approximate contributions, `score --contributions approximate`)."""


def _assert_same(answers: list[dict], expected: pd.DataFrame) -> None:
    assert [a["event_id"] for a in answers] == expected["event_id"].tolist()
    np.testing.assert_allclose([a["score"] for a in answers], expected["score"], rtol=0, atol=1e-9)
    assert [a["alert"] for a in answers] == expected["alert"].tolist()
    assert [a["reasons"] for a in answers] == [json.loads(r) for r in expected["reasons"]]
    assert {a["threshold"] for a in answers} == {answers[0]["threshold"]}


def test_scores_equal_batch_score_across_a_restart_and_a_redelivery(
    trained: Trained, serve, tmp_path: Path
) -> None:
    cheap = _batch_scores(trained, tmp_path, "approximate")
    exact = _batch_scores(trained, tmp_path, "exact")
    events = as_json(trained.events)
    state = tmp_path / "state"
    args = ("--model", str(trained.model), "--state", str(state))
    first = serve(*args).wait_ready()
    with first.client(None) as client:
        answers = [client.post("/v1/score", json=events[0]).json()]  # one object -> one object
        for start, end in ((1, 40), (40, 80), (80, 120)):
            answers += client.post("/v1/score", json=events[start:end]).json()
        version = client.get("/v1/model").json()["version"]
    assert first.stop() == 0, first.finish()
    assert (state / "live_state.bin").stat().st_size > 0
    assert json.loads((state / "live_state.json").read_text())["model_version"] == version

    second = serve(*args).wait_ready()
    clash = serve(*args)
    assert clash.process.wait(timeout=60) == 2
    lines = clash.finish().strip().splitlines()
    assert len(lines) == 1 and "in use by hybrid-ad serve pid" in lines[0], lines
    with second.client(None) as client:
        again = client.post("/v1/score", json=events[119]).json()  # redelivered: not counted
        for start in range(120, len(events), 60):
            batch = events[start : start + 60]
            answers += client.post("/v1/score", json=batch, params=EXACT).json()
    assert second.stop() == 0
    assert again["event_id"] == answers[119]["event_id"]
    assert all(a["model_version"] == version for a in answers)
    _assert_same(answers[:120], cheap.iloc[:120])  # the default reasons, then exact ones
    _assert_same(answers[120:], exact.iloc[120:])


def test_validation_limits_and_auth(trained: Trained, serve) -> None:
    server = serve("--model", str(trained.model), "--token-file", str(trained.token_file))
    server.wait_ready()
    event = as_json(trained.events.iloc[:1])[0]
    with server.client() as client, server.client(None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").json()["status"] == "ready"
        for path in ("/v1/model", "/metrics", "/docs", "/openapi.json"):
            assert anonymous.get(path).status_code == 401, path
        assert anonymous.post("/v1/score", json=event).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert anonymous.post("/v1/score", json=event, headers=wrong).status_code == 401
        assert anonymous.post("/v1/admin/reload").status_code == 401

        bad = client.post("/v1/score", json=[event, {**event, "amount": "abc"}])
        assert bad.status_code == 422
        assert bad.json()["error"].startswith("event 1: field 'amount': Input should be a valid")
        assert bad.json()["detail"][0]["loc"] == ["body", 1, "amount"]
        missing = client.post("/v1/score", json={k: v for k, v in event.items() if k != "amount"})
        assert (
            missing.status_code == 422
            and missing.json()["error"] == "field 'amount': Field required"
        )
        assert client.post("/v1/score", json={**event, "timestamp": "soon"}).status_code == 422
        assert client.post("/v1/score", content=b"{not json").status_code == 422
        assert client.post("/v1/score", content=b"42").json()["error"].startswith("body: ")
        too_many = client.post("/v1/score", json=[event] * 1001)
        assert too_many.status_code == 422 and "at most 1000" in too_many.json()["error"]
        huge = client.post("/v1/score", content=b"[" + b" " * MAX_BODY_BYTES + b"]")
        assert huge.status_code == 413

        ok = client.post("/v1/score", json=[event, {**event, "extra_field": 1}])
        assert ok.status_code == 200 and len(ok.json()) == 2
        assert set(ok.json()[0]["reasons"]) == {"rules", "judge", "autoencoder"}
        exact = client.post("/v1/score", params={"contributions": "exact"}, json=event).json()
        cheap = ok.json()[0]["reasons"]  # the default: approximate contributions
        assert cheap["rules"] == exact["reasons"]["rules"]
        assert cheap["autoencoder"] == exact["reasons"]["autoencoder"]
        assert len(cheap["judge"]) == len(exact["reasons"]["judge"]) == 3
        assert ok.json()[0]["score"] == exact["score"]
        bogus = client.post("/v1/score", params={"contributions": "shap"}, json=event)
        assert bogus.status_code == 422
        refusal = "contributions: expected one of approximate, exact, got 'shap'"
        assert bogus.json()["error"] == refusal
        quick = client.post("/v1/score", params={"reasons": "none"}, json=event).json()
        assert quick["reasons"] is None and quick["event_id"] == ok.json()[0]["event_id"]
        unknown = client.post("/v1/score", params={"reasons": "some"}, json=event)
        assert unknown.status_code == 422 and unknown.json()["error"].startswith("reasons:")
        document = client.get("/openapi.json").json()
        schema = document["components"]["schemas"]["Event"]
        assert {"timestamp", "account_id", "watch_seconds", "amount"} <= set(schema["required"])
        body = document["paths"]["/v1/score"]["post"]["requestBody"]["content"]
        assert body["application/json"]["schema"]["oneOf"][0] == {
            "$ref": "#/components/schemas/Event"
        }
        wrong_method = client.get("/v1/score")  # served outside FastAPI's router, answered alike
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert wrong_method.json() == {"detail": "Method Not Allowed"}
        model = client.get("/v1/model").json()
        manifest = json.loads((trained.model / "manifest.json").read_text())
        assert model["manifest_sha256"] == manifest["manifest_sha256"]
        assert model["data_sha256"] == manifest["data_sha256"]
        assert model["version"] == ok.json()[0]["model_version"]

        client.post("/v1/score", json=as_json(trained.events.iloc[1:200]))
        metrics = client.get("/metrics").text
        assert 'hybrid_ad_request_seconds_count{endpoint="/v1/score",status="422"}' in metrics
        assert 'hybrid_ad_stage_seconds_count{stage="score"}' in metrics
        assert "hybrid_ad_events_scored_total 203.0" in metrics
        assert "hybrid_ad_score_count 203.0" in metrics
        assert 'hybrid_ad_score_bucket{le="+Inf"} 203.0' in metrics
        assert 'hybrid_ad_drift_psi{column="score:judge"}' in metrics
        assert "hybrid_ad_score_bucket" in metrics and "hybrid_ad_alerts_total" in metrics
    assert server.stop() == 0


def _new_version(source: Path, target: Path) -> None:
    """The same model with another threshold: a new version, as a retrain would give."""
    detector = Detector.load(source)
    detector.threshold_ = 0.5 if detector.threshold_ != 0.5 else 0.6
    detector.save(target)


def _switch(link: Path, target: Path) -> None:
    tmp = link.with_name(".current.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    tmp.replace(link)


def test_reload_good_and_bad_models_under_concurrent_requests(
    trained: Trained, serve, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    shutil.copytree(trained.model, registry / "v1")
    _new_version(trained.model, registry / "v2")
    shutil.copytree(trained.model, registry / "v3")
    judge = registry / "v3" / "judge.json"
    judge.write_bytes(judge.read_bytes()[:-10])  # truncated: refused by its checksum
    current = registry / "current"
    _switch(current, registry / "v1")
    server = serve("--model", str(current), "--token-file", str(trained.token_file))
    server.wait_ready()
    events = as_json(trained.events)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def hammer(stop: asyncio.Event) -> list[tuple[int, str]]:
        seen = []
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            i = 0
            while not stop.is_set():
                batch = events[i % 200 : i % 200 + 5]
                response = await client.post("/v1/score", json=batch)
                seen.append((response.status_code, response.json()[0]["model_version"]))
                i += 5
        return seen

    async def scenario() -> tuple[list[list[tuple[int, str]]], list[httpx.Response]]:
        stop = asyncio.Event()
        workers = [asyncio.create_task(hammer(stop)) for _ in range(4)]
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as admin:
            await asyncio.sleep(0.5)
            _switch(current, registry / "v2")
            good = await admin.post("/v1/admin/reload")
            await asyncio.sleep(0.3)
            _switch(current, registry / "v3")
            bad = await admin.post("/v1/admin/reload")
            await asyncio.sleep(0.3)
        stop.set()
        return [await worker for worker in workers], [good, bad]

    seen, (good, bad) = asyncio.run(scenario())
    old, new = good.json()["previous"], good.json()["version"]
    assert good.status_code == 200 and old != new
    assert bad.status_code == 409 and "v3/judge.json: checksum mismatch" in bad.json()["error"]
    assert bad.json()["version"] == new
    for worker in seen:
        assert worker and all(status == 200 for status, _ in worker)
        versions = [version for _, version in worker]
        assert set(versions) <= {old, new}
        assert versions == sorted(versions, key=[old, new].index)  # never back to the old one
    assert any(version == new for worker in seen for _, version in worker)

    _switch(current, registry / "v1")  # SIGHUP reloads too, without the admin endpoint
    server.process.send_signal(signal.SIGHUP)
    with server.client() as client:
        deadline = time.monotonic() + 60
        while client.get("/v1/model").json()["version"] != old:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        metrics = client.get("/metrics").text
    assert 'hybrid_ad_reloads_total{result="refused"} 1.0' in metrics
    assert server.stop() == 0


def test_admin_needs_a_token_and_a_bad_model_is_an_error_at_start(
    trained: Trained, serve, tmp_path: Path
) -> None:
    server = serve("--model", str(trained.model)).wait_ready()
    with server.client(None) as client:
        assert client.post("/v1/admin/reload").status_code == 401
        assert client.get("/v1/model").status_code == 200  # no token file: open
    assert server.stop() == 0
    broken = tmp_path / "broken"
    shutil.copytree(trained.model, broken)
    (broken / "rules.json").write_text("{}")
    failing = serve("--model", str(broken))
    assert failing.process.wait(timeout=120) == 2
    assert "rules.json: checksum mismatch" in failing.finish().strip().splitlines()[-1]
    missing = serve("--model", str(tmp_path / "nothing"))
    assert missing.process.wait(timeout=60) == 2
    assert (
        missing.finish().strip()
        == f"error: --model {tmp_path / 'nothing'}: not a saved model (no manifest.json)"
    )
