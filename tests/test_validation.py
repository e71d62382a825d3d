"""Learning curves during training: the validation pass, its log, TensorBoard event files and the
checkpoint that is best by the validation signal; the signals themselves on real shards."""
import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model.errors import HamucoError
from model.trainer import (CHECKPOINT_BEST, CHECKPOINT_FINAL, TENSORBOARD_DIR, VALIDATION_LOG, TrainConfig,
                           Trainer, load_checkpoint)
from model.validation import LABEL_SIGNAL, validation_signals

from .test_trainer import Toy, objective, toy_model


class HeldOut:
    """A validation pass on samples training never sees: the toy regression's L1 error on fresh inputs."""

    def __init__(self):
        g = torch.Generator().manual_seed(99)
        data = Toy()
        self.w = torch.linalg.lstsq(data.x, data.y).solution
        self.x = torch.randn(16, 8, generator=g)
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        assert not model.training  # the pass runs in eval mode
        with torch.no_grad():
            err = float((model(self.x) - self.x @ self.w).abs().mean())
        return {LABEL_SIGNAL: err, "other": 2 * err}


def train(out, steps=10, until=None, validation=True, **kw):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, checkpoint_every=3, progress=False,
                      validate_every=3 if validation else 0, **kw)
    t = Trainer(toy_model(), Toy(), objective, cfg, out, architecture={"model": "toy", "hidden": 16},
                validation=HeldOut() if validation else None)
    t.train(until=until)
    return t


def rows(path):
    return [json.loads(line) for line in (path / VALIDATION_LOG).read_text().splitlines()]


def scalars(path, tag):
    acc = EventAccumulator(str(path / TENSORBOARD_DIR))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_validation_pass_logs_curves_and_keeps_the_best_checkpoint(tmp_path):
    t = train(tmp_path)
    log = rows(tmp_path)
    assert [r["step"] for r in log] == [3, 6, 9, 10]  # every 3 steps and the last
    best = min(log, key=lambda r: r[LABEL_SIGNAL])
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_BEST)
    assert ckpt["state"]["step"] == best["step"] and ckpt["state"]["best"]["value"] == pytest.approx(best[LABEL_SIGNAL])
    # the best checkpoint holds the weights that scored best: scoring them again gives the same value
    model = toy_model()
    model.load_state_dict(ckpt["model"])
    assert HeldOut()(model.eval())[LABEL_SIGNAL] == pytest.approx(best[LABEL_SIGNAL], rel=1e-6)
    # training lowered the held-out error, and "best" marks exactly the rows that improved on all before
    assert log[-1][LABEL_SIGNAL] < log[0][LABEL_SIGNAL]
    running = np.minimum.accumulate([r[LABEL_SIGNAL] for r in log])
    assert [r["best"] for r in log] == [i == 0 or running[i] < running[i - 1] for i in range(len(log))]
    # TensorBoard event files hold the same validation values and every step's losses
    tb = scalars(tmp_path, f"validation/{LABEL_SIGNAL}")
    assert sorted(tb) == [3, 6, 9, 10]
    assert all(tb[r["step"]] == pytest.approx(r[LABEL_SIGNAL], rel=1e-6) for r in log)
    assert sorted(scalars(tmp_path, "loss/total")) == list(range(1, 11))
    assert (tmp_path / "loss_curve.png").stat().st_size > 0


def test_validation_leaves_training_unchanged(tmp_path):
    with_val = train(tmp_path / "with")
    assert with_val.validation.calls == 4
    without = train(tmp_path / "without", validation=False)
    a = load_checkpoint(tmp_path / "with" / CHECKPOINT_FINAL)["model"]
    b = load_checkpoint(tmp_path / "without" / CHECKPOINT_FINAL)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "without" / VALIDATION_LOG).exists()


def test_killed_and_resumed_run_logs_what_an_uninterrupted_one_logs(tmp_path):
    train(tmp_path / "whole")
    train(tmp_path / "cut", until=8)  # last checkpoint at step 6; validation at 3 and 6 logged
    assert [r["step"] for r in rows(tmp_path / "cut")] == [3, 6]
    train(tmp_path / "cut")  # resumes from step 6
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "whole")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "cut")] == strip
    best_whole = load_checkpoint(tmp_path / "whole" / CHECKPOINT_BEST)
    best_cut = load_checkpoint(tmp_path / "cut" / CHECKPOINT_BEST)
    assert best_whole["state"]["best"] == best_cut["state"]["best"]
    assert all(torch.equal(best_whole["model"][k], best_cut["model"][k]) for k in best_whole["model"])
    # the event files of the resumed run give each step once, with the uninterrupted run's values
    whole, cut = scalars(tmp_path / "whole", f"validation/{LABEL_SIGNAL}"), scalars(tmp_path / "cut",
                                                                                   f"validation/{LABEL_SIGNAL}")
    assert sorted(cut) == sorted(whole) and all(cut[s] == pytest.approx(whole[s]) for s in whole)


def test_unknown_selection_signal_is_a_clear_error(tmp_path):
    with pytest.raises(HamucoError, match="no signal 'pa_mpjpe'.*label_signal, other"):
        train(tmp_path, select_by="pa_mpjpe")


def test_signals_on_real_shards(tiny_dataset, tiny_checkpoint):
    from model.inference import load_model
    from pipeline.dataset import ShardDataset
    from pipeline.evaluate import _collate, validation_pass

    run = validation_pass(str(tiny_dataset), "val", max_samples=4)
    assert run.samples == 1 and run.ground_truth
    model, _ = load_model(tiny_checkpoint)
    model.train()
    sig = run(model)
    assert model.training  # given back in the mode it had
    for key in ("label_2d_px/single", "label_2d_px/interaction", "cross_view_mm", "pa_mpjpe_mm/single",
                "pa_mpjpe_mm/interaction", "pa_mpjpe_mm/fusion", "orientation_deg/single"):
        assert np.isfinite(sig[key]) and sig[key] >= 0, key
    assert sig[LABEL_SIGNAL] == pytest.approx(sig["label_2d_px/interaction"] + sig["cross_view_mm"])
    # labels equal to the network's own projections: no 2D error; moved by 3 px: 3 px
    ds = ShardDataset(str(tiny_dataset), split="val", confidence="raw")
    batch = _collate([ds[0]])
    with torch.no_grad():
        out = model.eval()(batch["images"], batch["view_mask"])
    crop = int(ds.readers[0].crop_size)
    own = out.fused.joints_2d_pixels(crop).view(batch["keypoints"].shape).float()
    batch["confidence"] = torch.ones_like(batch["confidence"])
    for shift, expected in ((0.0, 0.0), (3.0, 3.0)):
        batch["keypoints"] = own + torch.tensor([shift, 0.0])
        s = validation_signals(model, [batch], crop)
        assert s["label_2d_px/interaction"] == pytest.approx(expected, abs=1e-3)
    # no ground truth in the batch: only the label-only signals
    s = validation_signals(model, [{k: v for k, v in batch.items() if not k.startswith("gt_")}], crop)
    assert np.isnan(s["pa_mpjpe_mm/single"]) and np.isfinite(s["cross_view_mm"])


def test_train_task_writes_validation_and_event_files(tiny_checkpoint):
    run = tiny_checkpoint.parent
    log = rows(run)
    assert [r["step"] for r in log] == [2]  # the tiny run's 2 steps: the pass at the last step
    assert np.isfinite(log[0]["pa_mpjpe_mm/single"]) and log[0]["best"]
    assert (run / CHECKPOINT_BEST).is_file()
    assert sorted(scalars(run, f"validation/{LABEL_SIGNAL}")) == [2]
    prov = load_checkpoint(run / CHECKPOINT_FINAL)["provenance"]["validation"]
    assert prov["split"] == "val" and prov["samples"] == 1 and prov["ground_truth"] is True


def test_report_draws_the_validation_curves_beside_the_losses(tiny_checkpoint, tmp_path):
    import base64
    import shutil

    import cv2

    from pipeline.report import training_figure

    def width(metrics):
        uri = training_figure(metrics)
        png = base64.b64decode(uri.split(",", 1)[1])
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[1]

    alone = tmp_path / "metrics.jsonl"
    shutil.copy(tiny_checkpoint.parent / "metrics.jsonl", alone)
    # the tiny run's validation has label signals and ground truth: five more panels than the losses alone
    assert width(tiny_checkpoint.parent / "metrics.jsonl") > 1.8 * width(alone)


def test_validation_pass_hands_out_its_batches_so_they_can_be_scored_one_by_one(tiny_dataset, tiny_checkpoint):
    from model.inference import load_model
    from pipeline.evaluate import validation_pass

    run = validation_pass(str(tiny_dataset), "val", max_samples=4)
    model, _ = load_model(tiny_checkpoint)
    assert len(run.batches) == 1 and run.batches[0]["images"].shape[0] == run.samples
    whole, by_batch = run(model), validation_signals(model, run.batches, run.crop_size)
    assert set(whole) == set(by_batch)
    for key, value in whole.items():  # the pass is its batches scored together: the same figures
        assert value == pytest.approx(by_batch[key], nan_ok=True), key
