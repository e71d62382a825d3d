"""bench/chaos.py --quick: targeted kills over preparation and training, each rerun or resumed."""
import json
import subprocess
import sys

from tests.helpers import REPO, clean_env


def test_chaos_quick_finds_nothing_broken(tmp_path):
    result = subprocess.run([sys.executable, "bench/chaos.py", "--quick", "--work", str(tmp_path)], cwd=REPO,
                            env=clean_env(), capture_output=True, text=True, timeout=900)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert summary["kills"] >= 10 and summary["kills_prepare"] >= 8 and summary["kills_train"] >= 2
    for key in ("incomplete_outputs", "failed_reruns", "data_differences", "weight_differences", "hangs",
                "leftover_temporaries"):
        assert summary[key] == 0, (key, result.stdout[-4000:])
