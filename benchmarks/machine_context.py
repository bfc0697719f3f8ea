"""What a benchmark prints next to its figures: the commit and the machine's load."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    """The commit and the load average, for the figures' context."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"commit {commit or '?'}, {os.cpu_count()} cores, load average {load}"
