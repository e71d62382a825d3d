"""Same seed, same bits: separate processes give identical checkpoints (initialisation included) and
identical shard data."""
import json

import pytest
import torch

from tests.helpers import run_cli, same_arrays, shard_arrays
from tests.test_faults import _equal


# bf16: a killed and resumed bf16 run ends with the bits of an uninterrupted one in another process
# (tests/test_faults.py, and bench/chaos.py --quick in tests/test_chaos.py)
@pytest.mark.parametrize("precision", ["fp32"])
def test_two_training_processes_with_one_seed_give_identical_checkpoints(precision, tiny_dataset, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        r = run_cli("train", "--dataset", tiny_dataset, "--out", out, "--backbone", "resnet18", "--steps", "3",
                    "--batch-size", "1", "--seed", "5", "--precision", precision)
        assert r.returncode == 0, r.stderr[-2000:]
    ckpts = [torch.load(next(o.glob("train-*/checkpoint-final.pt")), map_location="cpu", weights_only=True)
             for o in outs]
    assert not _equal(ckpts[0], ckpts[1]), _equal(ckpts[0], ckpts[1])[:10]
    losses = [[json.loads(x)["total"] for x in next(o.glob("train-*/metrics.jsonl")).read_text().splitlines()]
              for o in outs]
    assert losses[0] == losses[1] and len(losses[0]) == 3  # from the first step on
    # another seed is another run (the test could fail)
    r = run_cli("train", "--dataset", tiny_dataset, "--out", tmp_path / "c", "--backbone", "resnet18", "--steps", "1",
                "--batch-size", "1", "--seed", "6", "--precision", precision)
    assert r.returncode == 0
    other = torch.load(next((tmp_path / "c").glob("train-*/checkpoint-final.pt")), weights_only=True)["model"]
    key = next(k for k, v in ckpts[0]["model"].items() if v.is_floating_point() and v.numel() > 100)
    assert not torch.equal(other[key], ckpts[0]["model"][key])


def test_two_prepare_processes_give_identical_shards(small_capture, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        r = run_cli("prepare", small_capture.root, "--out", out, "--frames-per-shard", "2", "--crop-size", "64")
        assert r.returncode == 0, r.stderr[-2000:]
    shards = [sorted(o.rglob("shard-*.h5")) for o in outs]
    assert len(shards[0]) == 2 and [p.relative_to(outs[0]) for p in shards[0]] == \
        [p.relative_to(outs[1]) for p in shards[1]]
    for a, b in zip(*shards):
        assert not same_arrays(shard_arrays(a), shard_arrays(b)), (a.name, same_arrays(shard_arrays(a),
                                                                                     shard_arrays(b)))
