"""bench/soak.py reports each process's peak RSS beside start and end: a short soak of one
loopback camera through the detector."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_soak_reports_peak_rss(shared_models: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--models", str(shared_models), "--minutes", "0.75",
         "--warmup", "20", "--sample-s", "5", "--sources", "1", "--encoder", "none", "--fps", "10"],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    rows = report["processes"]
    assert any(k.startswith("frametok-src-") for k in rows) and any(k.startswith("frametok-worker") for k in rows)
    for key, row in rows.items():
        start, peak, end = row["rss_mib"]
        assert peak >= max(start, end), (key, row)
        assert row["hwm_mib"] >= peak - 0.5, (key, row)  # the kernel's high-water mark covers every sample
    assert len(report["samples"]) >= 3
    assert all({"s", "total", "rss", "anon"} <= set(s) for s in report["samples"])
