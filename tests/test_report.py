"""The evaluation report: files exist, images are real PNGs, the HTML is offline and escaped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hybrid_ad.reporting.report import markdown_table, write_report

STAGES = ("rules", "autoencoder", "judge", "judge_without_autoencoder")
PNGS = (
    "reconstruction_error.png",
    "curves.png",
    "feature_importance.png",
    "confusion_matrices.png",
    "score_distributions.png",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stage_metrics(threshold: float, roc_auc: float | None = 0.91234) -> dict:
    return {
        "roc_auc": roc_auc,
        "average_precision": 0.31416,
        "precision_at_k": 0.25,
        "k": 100,
        "threshold": threshold,
        "precision": 0.4,
        "recall": 0.6,
        "f1": 0.48,
        "false_positive_rate": 0.00123,
        "confusion_matrix": {"tn": 5980, "fp": 8, "fn": 5, "tp": 7},
    }


def _metrics(stages: tuple[str, ...] = STAGES) -> dict:
    return {
        "stages": {name: _stage_metrics(0.5 + i) for i, name in enumerate(stages)},
        "operating_point": {
            "rules_recall": 0.6,
            "rules_false_positive_rate": 0.001,
            "judge_false_positive_rate_at_rules_recall": 0.0004,
        },
        "split": {
            "train": {"rows": 17000, "positives": 30, "start_seconds": 0, "end_seconds": 1e5},
            "validation": {
                "rows": 6000,
                "positives": 9,
                "start_seconds": 1e5,
                "end_seconds": 1.4e5,
            },
            "test": {"rows": 6000, "positives": 12, "start_seconds": 1.4e5, "end_seconds": 1.7e5},
        },
        "config": {"seed": 42},
        "label_source": "pseudo",
        "timings_s": {"load": 2.1, "fit": 40.0},
    }


def _data(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.01
    error = np.exp(rng.normal(0, 1, n) + 2 * y)
    scores = {
        "rules": (rng.poisson(0.3, n) + y * rng.poisson(2, n)).astype(float),
        "autoencoder": error,
        "judge": 1 / (1 + np.exp(-(rng.normal(-6, 1.5, n) + 7 * y))),
        "judge_without_autoencoder": 1 / (1 + np.exp(-(rng.normal(-6, 1.5, n) + 5 * y))),
    }
    return y.astype(int), scores, error


IMPORTANCE = {f"V{i}": 1.0 / i for i in range(1, 31)}


def _external_refs(page: str) -> list[str]:
    return [
        ref
        for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
        if not ref.startswith("data:")
    ]


@pytest.fixture(scope="module")
def labelled_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    y, scores, error = _data()
    out = tmp_path_factory.mktemp("report") / "reports"
    return write_report(out, _metrics(), y, scores, error, IMPORTANCE, title="demo report")


def test_writes_every_file_as_a_real_png(labelled_report: Path) -> None:
    assert labelled_report.name == "index.html"
    for name in PNGS:
        data = (labelled_report.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert 5_000 < len(data) < 300_000, name
    leftovers = [p.name for p in labelled_report.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_html_is_self_contained(labelled_report: Path) -> None:
    page = labelled_report.read_text(encoding="utf-8")
    assert "http://" not in page
    assert "https://" not in page
    assert _external_refs(page) == []
    assert page.count('src="data:image/png;base64,') == len(PNGS)
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()


def test_html_shows_stages_metrics_and_explanations(labelled_report: Path) -> None:
    page = labelled_report.read_text(encoding="utf-8")
    assert "<title>demo report</title>" in page
    for name in STAGES:
        assert f"<td>{name}</td>" in page
    for value in ("0.9123", "0.3142", "0.2500", "0.4800", "0.0012"):
        assert value in page
    # The operating point states both false positive rates side by side.
    assert "0.001000" in page
    assert "0.000400" in page
    assert "cuts false positives by 60.0%" in page
    for text in ("17,000", "pseudo", "40.00", "How to read this report", "validation"):
        assert text in page
    for term in ("ROC AUC", "average precision", "precision at k"):
        assert term.lower() in page.lower()


def test_unlabelled_data_skips_class_plots(tmp_path: Path) -> None:
    _, scores, error = _data(n=2000)
    metrics = _metrics()
    for stage in metrics["stages"].values():
        stage.update(roc_auc=None, average_precision=None, confusion_matrix=None)
    for y in (None, np.zeros(2000, dtype=int)):
        index = write_report(tmp_path / str(y is None), metrics, y, scores, error, {})
        page = index.read_text(encoding="utf-8")
        assert not (index.parent / "curves.png").exists()
        assert (index.parent / "score_distributions.png").read_bytes().startswith(PNG_MAGIC)
        assert "no labels or only one class" in page
        assert "n/a" in page


def test_escapes_names_in_html(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    y, scores, error = _data(n=2000)
    scores[evil] = scores.pop("judge")
    metrics = _metrics(stages=("rules", evil))
    index = write_report(tmp_path, metrics, y, scores, error, {evil: 2.0, "V1": 1.0}, title=evil)
    page = index.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_rejects_misaligned_scores(tmp_path: Path) -> None:
    y, scores, error = _data(n=2000)
    scores["judge"] = scores["judge"][:-1]
    with pytest.raises(ValueError, match="judge"):
        write_report(tmp_path, _metrics(), y, scores, error, IMPORTANCE)


def test_markdown_table_formats_four_decimals_and_missing_values() -> None:
    metrics = {
        "stages": {
            "rules": _stage_metrics(2.0),
            "judge": {**_stage_metrics(0.5, roc_auc=None), "f1": float("nan")},
        }
    }
    lines = markdown_table(metrics).splitlines()
    assert lines[0] == (
        "| stage | ROC AUC | AP | P@k | precision | recall | F1 | FPR | daily precision |"
    )
    assert lines[1].startswith("|---|")
    assert lines[2] == (
        "| rules | 0.9123 | 0.3142 | 0.2500 | 0.4000 | 0.6000 | 0.4800 | 0.0012 | n/a |"
    )
    assert lines[3] == "| judge | n/a | 0.3142 | 0.2500 | 0.4000 | 0.6000 | n/a | 0.0012 | n/a |"
    assert len(lines) == 4
