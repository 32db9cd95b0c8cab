"""The GPU benchmark command at toy size on the CPU: every part runs and reports."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_runs_quick_on_the_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--quick", "--device", "cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["quick"] and result["device"] == "cpu"
    assert result["assign_speed"]["identical_images"] == 2 and result["assign_speed"]["speedup"] > 0
    assert result["train_step"]["paa_images_per_s"] > 0 and result["train_step"]["retinanet_images_per_s"] > 0
    step = result["student_step"]
    assert all(step[f"{mode}_ms"] > 0 for mode in ("baseline", "online", "cached", "colearn"))
    # The cached step reads its assignment: no sync in the assignment; the non-finite check is one.
    assert step["syncs_per_step"]["cached"] == 1 and step["syncs_per_step"]["online"] > 1
    assert result["assign"]["entries"] == 8 and result["assign"]["images_per_s"] > 0
    assert result["torchrun"]["ok"] and result["torchrun"]["backend"] == "gloo" and result["torchrun"]["iterations"] >= 1
