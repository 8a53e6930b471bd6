"""scripts/gpu_check.py's dry run (tiny model, CPU): the GPU check stays runnable where no GPU is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_trains_both_and_prints_the_ratio(tmp_path):
    output = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--output", str(output)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio GTPO / GRPO, median step time" in result.stdout
    results = json.loads(output.read_text())["results"]
    assert set(results) == {"grpo", "gtpo"}
    assert all(r["steps"] == 2 and r["median_step_s"] > 0 for r in results.values())
