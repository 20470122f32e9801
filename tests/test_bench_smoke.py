"""`bench/run --smoke` (what CI runs so the benchmark code cannot rot): every section runs once at
its smallest size (N = 10 simulated proxies) and produces figures, and the JSON says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_smoke_run_produces_every_section(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["profile"] == "smoke" and report["machine"]["cores"] == os.cpu_count()
    sections = {m["section"] for m in report["measures"]}
    expected = {"time to ready", "data path", "agent footprint", "control-plane scale", "identity", "DNS"}
    if os.geteuid() == 0:
        expected |= {"transparent proxy", "CNI"}
    else:
        assert set(report["errors"]) == {s.name for s in SECTIONS if s.needs_root}
    assert expected <= sections, (sections, report["errors"])
    for measure in report["measures"]:
        assert measure["samples"] and all(v >= 0 for v in measure["samples"]), measure
    assert "ratio" in done.stdout and "kuma-dp run → READY" in done.stdout
