"""Automatic precision: bf16 only where the device computes it natively, said and recorded, kept on resume."""
import json

import pytest
import torch

import model.precision as mp
from model.errors import HamucoError
from model.trainer import CHECKPOINT_LAST, TrainConfig, Trainer, load_checkpoint

from .helpers import clean_env, run_cli
from .test_trainer import Toy, objective, toy_model


@pytest.fixture
def native(monkeypatch):
    """Set whether 'this CPU' computes bf16 natively; each test starts with no warning given yet."""
    monkeypatch.setattr(mp, "_warned", set())

    def set_native(value: bool) -> None:
        monkeypatch.setattr(mp, "cpu_has_native_bf16", lambda: value)
    return set_native


def test_auto_chooses_bf16_only_where_the_cpu_computes_it_natively(native):
    native(True)
    c = mp.resolve_precision("auto")
    assert c.precision == "bf16" and c.bf16 and c.native_bf16
    assert "natively" in c.reason and c.line().startswith("precision: bf16 (auto: this CPU (")
    native(False)
    c = mp.resolve_precision("auto")
    assert c.precision == "fp32" and not c.native_bf16
    assert "no native bf16" in c.reason and c.line().startswith("precision: fp32 (auto:")
    assert c.cpu_capability == mp.cpu_capability() and c.cpu_model == mp.cpu_model()
    rec = c.record()
    assert rec["precision"] == "fp32" and rec["requested"] == "auto" and rec["cpu_capability"]
    assert mp.resolve_precision("fp32").precision == "fp32"
    with pytest.raises(HamucoError, match="precision must be one of"):
        mp.resolve_precision("fp16")


def test_explicit_bf16_without_native_bf16_runs_and_warns_once(native, capsys):
    native(False)
    first, second = mp.resolve_precision("bf16"), mp.resolve_precision("bf16")
    assert first.precision == second.precision == "bf16" and "emulated" in first.reason
    assert capsys.readouterr().err.count("warning: bf16 requested") == 1
    native(True)
    mp._warned.clear()
    mp.resolve_precision("bf16")
    assert "warning" not in capsys.readouterr().err


def test_environment_overrides_the_detection(monkeypatch):
    monkeypatch.setenv("HAMUCO_NATIVE_BF16", "1")
    assert mp.cpu_has_native_bf16() and mp.resolve_precision("auto").precision == "bf16"
    monkeypatch.setenv("HAMUCO_NATIVE_BF16", "0")
    assert not mp.cpu_has_native_bf16() and mp.resolve_precision("auto").precision == "fp32"


def test_run_in_bf16_hands_back_float32_outputs(native):
    native(True)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    out = mp.run_in(mp.resolve_precision("auto"), lambda t: {"y": lin(t), "n": (lin(t), 3)}, x)
    assert out["y"].dtype == torch.float32 and out["n"][0].dtype == torch.float32 and out["n"][1] == 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # what run_in converted
    torch.testing.assert_close(out["y"], lin(x), atol=0.05, rtol=0.05)
    assert torch.equal(mp.run_in(mp.resolve_precision("fp32"), lin, x), lin(x))


def _train(out, steps, until=None, **kw):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, checkpoint_every=3, progress=False, **kw)
    t = Trainer(toy_model(), Toy(), objective, cfg, out, architecture={"model": "toy", "hidden": 16})
    t.train(until=until)
    return t


@pytest.mark.parametrize("is_native,expected", [(True, "bf16"), (False, "fp32")])
def test_training_records_its_precision_and_says_it(native, capsys, tmp_path, is_native, expected):
    native(is_native)
    t = _train(tmp_path, 6)
    assert t.precision.precision == expected
    assert f"precision: {expected} (auto: " in capsys.readouterr().err
    rec = load_checkpoint(tmp_path / CHECKPOINT_LAST)["precision"]
    assert rec["precision"] == expected and rec["requested"] == "auto" and rec["cpu_capability"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["precision"] for r in rows} == {expected}


def test_a_resumed_run_keeps_its_precision_and_says_so(native, capsys, tmp_path):
    native(True)
    _train(tmp_path, 9, until=4)  # killed after step 4; checkpoint at step 3, in bf16
    capsys.readouterr()
    native(False)  # the run moves to a CPU without native bf16: auto would choose fp32 here
    t = _train(tmp_path, 9)
    err = capsys.readouterr().err
    assert t.precision.precision == "bf16"
    assert "precision: bf16 (auto: kept from the checkpoint this run resumes; auto here would choose fp32" in err
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 10)) and {r["precision"] for r in rows} == {"bf16"}
    # and the other way round: an fp32 run stays fp32 where bf16 is native
    native(False)
    _train(tmp_path / "b", 9, until=4)
    native(True)
    assert _train(tmp_path / "b", 9).precision.precision == "fp32"


def test_checkpoints_without_a_precision_record_keep_their_configured_one(native, tmp_path):
    """Checkpoints written before runs recorded the choice: their explicit fp32/bf16 is kept."""
    native(False)
    _train(tmp_path, 9, until=4, precision="bf16")
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_LAST)
    del ckpt["precision"]
    torch.save(ckpt, tmp_path / CHECKPOINT_LAST)
    assert _train(tmp_path, 9, precision="auto").precision.precision == "bf16"


@pytest.mark.slow
def test_hamuco_train_says_and_records_what_the_cpu_gets(tiny_dataset, tmp_path):
    """The command, as a user runs it, on each kind of CPU (the detection overridden for the process)."""
    for flag, expected in (("0", "fp32"), ("1", "bf16")):
        out = tmp_path / flag
        r = run_cli("train", "--dataset", tiny_dataset, "--out", out, "--backbone", "resnet18", "--steps", "2",
                    "--batch-size", "1", env=clean_env(HAMUCO_NATIVE_BF16=flag))
        assert r.returncode == 0, r.stderr
        assert f"precision: {expected} (auto: " in r.stderr + r.stdout
        final = next(out.glob("train-*/checkpoint-final.pt"))
        assert load_checkpoint(final)["precision"]["precision"] == expected


def test_inference_in_bf16_gives_float32_predictions_close_to_fp32(native):
    """The network's forward under a bf16 choice (emulated here where the CPU lacks it): float32 outputs
    for everything downstream, close to the fp32 forward; fp32 is the plain forward, bit for bit."""
    import numpy as np

    from model.hamuco import HaMuCo
    from model.inference import infer

    native(True)
    torch.manual_seed(0)
    net = HaMuCo("resnet18", image_size=64).eval()
    crops = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    plain = infer(net, crops)
    same = infer(net, crops, precision=mp.resolve_precision("fp32"))
    half = infer(net, crops, precision=mp.resolve_precision("auto"))
    assert np.array_equal(plain.joints, same.joints)
    assert half.joints.dtype == plain.joints.dtype == np.float32
    assert not np.array_equal(half.joints, plain.joints)
    assert np.abs(half.joints - plain.joints).max() < 0.01  # metres: bf16 rounding, not another answer
