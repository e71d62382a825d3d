"""The ``hamuco`` command line.

User mistakes (a missing file, a bad capture, a refused pickle) end with a one-line message
and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from model.errors import HamucoError

EXIT_INVALID = 1  # the input was read and found invalid
EXIT_USAGE = 2  # the command could not run (bad arguments, missing files)


def _synth(args: argparse.Namespace) -> int:
    from pipeline.synthetic import SynthConfig, format_summary, generate_capture, summarize

    cfg = SynthConfig(cameras=args.cameras, frames=args.frames, seed=args.seed, image_size=args.image_size,
                      rig=args.rig, distance=args.distance, hand_model=args.hand_model,
                      handedness=args.handedness, occluders=args.occluders, image_format=args.image_format,
                      keyframe_every=args.keyframe_every, pose_prior=args.pose_prior, shape_sigma=args.shape_sigma,
                      roll_deg=args.roll_deg, travel=args.travel)
    cfg.check()
    capture = generate_capture(args.out, cfg, overwrite=args.overwrite, workers=args.workers,
                               progress=not args.quiet)
    print(f"wrote {capture.root}")
    print(format_summary(summarize(capture)))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pipeline.validate import report_json, validate_capture

    source = args.capture
    if args.hanco_sequence is not None:
        from pipeline.hanco import read_hanco_sequence

        source = read_hanco_sequence(args.capture, args.hanco_sequence)
    report = validate_capture(source, check_images=not args.no_images, progress=not args.quiet,
                              allow_external_paths=args.allow_external_paths, hand_frames=args.hand_frames)
    print(report_json(report) if args.json else report.format())
    return 0 if report.ok else EXIT_INVALID


def _import_capture(args: argparse.Namespace) -> int:
    from pipeline.import_capture import format_import_summary, import_capture, parse_offsets
    from pipeline.validate import validate_capture
    from tasks.base import check_output_dir

    check_output_dir(args.out)
    capture, summary = import_capture(args.out, args.videos, args.calibration, fmt=args.format, units=args.units,
                                      frame_offsets=parse_offsets(args.frame_offsets), every=args.every,
                                      start=args.start, end=args.end, copy=args.copy_videos,
                                      handedness=args.handedness, estimate_offsets=args.estimate_offsets,
                                      max_offset=args.max_offset)
    print(f"wrote {Path(args.out) / 'capture.json'}")
    print(format_import_summary(summary))
    report = validate_capture(capture.root, check_images=not args.no_images, progress=False,
                              hand_frames=0 if args.no_images else args.hand_frames)
    print("validation:")
    print("  " + report.format(limit=20).replace("\n", "\n  "))
    return 0 if report.ok else EXIT_INVALID


def _prepare_mano(args: argparse.Namespace) -> int:
    from model.mano_io import convert_mano_pickle

    data = convert_mano_pickle(args.pickle, args.out)
    print(f"wrote {args.out}: {data['v_template'].shape[0]} vertices, {data['f'].shape[0]} faces, "
          f"{data['shapedirs'].shape[-1]} shape components")
    return 0


def _run_luigi(args: argparse.Namespace, tasks: list, workers: int = 1, scheduler_host: str | None = None,
               scheduler_port: int = 8082) -> bool:
    from tasks.runner import run_tasks

    return run_tasks(tasks, workers, scheduler_host, scheduler_port, verbose=getattr(args, "verbose", False),
                     prefix=f"hamuco {args.command}").ok


def _print_dataset(index_path: str) -> None:
    from pipeline.shards import inspect_shard

    index = json.loads(Path(index_path).read_text())
    print(f"dataset index: {index_path}")
    split = index["split"]
    print(f"  shards: {len(index['shards'])} (train {len(split['train'])}, val {len(split['val'])}, "
          f"test {len(split['test'])}; split by {split['by']}), labeler {index['labeler']}, crops {index['crop_size']}px")
    for s in index["shards"]:
        info = inspect_shard(s["path"])
        st = info["statistics"]
        print(f"  {Path(s['path']).parent.name}/{Path(s['path']).name}: {info['samples']} samples x "
              f"{info['views']} views, valid {st['valid_views']:.0%}, recovered {st['recovered_views']:.0%}, "
              f"mean confidence {st['mean_confidence']:.2f} (refined {st['mean_refined_confidence']:.2f})")
    for q in index["quarantine"]:
        c = q["counts"]
        print(f"  quarantine {q['capture']}: {q['views']} views, {c['skipped']} skipped, {c['recovered']} recovered, "
              f"{c['masked']} masked (table: {q['table']})")


def _prepare(args: argparse.Namespace) -> int:
    from pipeline.prepare import open_capture
    from tasks.prepare import PrepareDataset

    from tasks.base import check_output_dir

    params = {"captures": list(args.captures), "out": args.out, "labeler": args.labeler,
              "allow_external_paths": args.allow_external_paths}
    for name in ("frames_per_shard", "crop_size", "noise_sigma_px", "noise_outlier_rate", "noise_confidence",
                 "openpose_precision", "refine_threshold_px", "bootstrap", "bootstrap_disagree_px", "bootstrap_min_inliers", "smooth",
                 "smooth_window", "smooth_outlier_mm"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    task = PrepareDataset(**params)  # parameters out of range are refused here, before any work
    check_output_dir(args.out)
    from pipeline.validate import capture_level_errors, validate_capture

    for ref in args.captures:  # clear errors before any task starts (images are checked, and quarantined, later)
        fatal = capture_level_errors(validate_capture(open_capture(ref, allow_external_paths=args.allow_external_paths),
                                                      check_images=False))
        if fatal:
            raise HamucoError(f"{ref}: invalid capture:\n  " + "\n  ".join(str(p) for p in fatal))
    if args.weights:  # the OpenPose weights file: same as [OpenPoseLabeler] weights_path in luigi.cfg
        import luigi

        from tasks.prepare import OpenPoseLabeler

        if not Path(args.weights).is_file():
            raise HamucoError(f"{args.weights}: OpenPose weights file not found (--weights)")
        cfg = luigi.configuration.get_config()
        if not cfg.has_section("OpenPoseLabeler"):
            cfg.add_section("OpenPoseLabeler")
        cfg.set("OpenPoseLabeler", "weights_path", str(Path(args.weights).resolve()))
        OpenPoseLabeler.clear_instance_cache()
    if not _run_luigi(args, [task], args.workers, args.scheduler_host, args.scheduler_port):
        return EXIT_INVALID
    _print_dataset(task.output().path)
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipeline.dataset import check_dataset
    from tasks.base import check_output_dir
    from tasks.train import TrainModel

    params = {"dataset": args.dataset, "out": args.out}
    for name in ("backbone", "steps", "backbone_weights", "batch_size", "hand_model", "lr", "seed", "precision",
                 "checkpoint_every", "confidence", "weak_camera", "gamma", "points", "distill_to",
                 "aug_rotation_deg", "aug_colour", "aug_blur_prob", "aug_occlusion_prob", "initial_orientation",
                 "cross_view_warmup", "validate_every", "val_dataset", "val_samples", "view_keep_prob",
                 "view_keep_anneal_steps", "articulation", "pca_components", "lr_schedule", "lr_warmup_steps",
                 "grad_clip", "labels", "single_view_input", "keypoint_head_weights"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    if args.extrinsics:
        params["use_extrinsics"] = True
    task = TrainModel(**params)  # parameters out of range are refused here, before any work
    check_output_dir(args.out)
    # a clear error (missing or unreadable shard, no sample, no such weak camera) before any task
    check_dataset(args.dataset, "train", weak_camera=args.weak_camera, labels=args.labels or "raw")
    if not args.resume and task.run_dir.exists() and not Path(task.output().path).exists():
        import shutil

        shutil.rmtree(task.run_dir)  # start over instead of resuming the interrupted run
    if not _run_luigi(args, [task], 1, args.scheduler_host, args.scheduler_port):
        return EXIT_INVALID
    run = task.run_dir
    print(f"checkpoint: {task.output().path}")
    print(f"metrics: {run / 'metrics.jsonl'}  loss curve: {run / 'loss_curve.png'}")
    if (run / "validation.jsonl").exists():
        print(f"validation: {run / 'validation.jsonl'}  best by the label signal: {run / 'checkpoint-best.pt'}  "
              f"TensorBoard: tensorboard --logdir {run / 'tensorboard'}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from pipeline.dataset import check_dataset
    from tasks.base import check_output_dir
    from tasks.train import PretrainBackbone

    params = {"dataset": args.dataset, "out": args.out}
    for name in ("backbone", "steps", "batch_size", "lr", "seed", "precision", "confidence", "aug_rotation_deg",
                 "aug_colour", "labels"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    task = PretrainBackbone(**params)
    check_output_dir(args.out)
    check_dataset(args.dataset, "train", labels=args.labels or "raw")
    if not _run_luigi(args, [task], 1, args.scheduler_host, args.scheduler_port):
        return EXIT_INVALID
    print(f"backbone weights: {task.output().path}")
    print(f"use them: hamuco train --backbone {task.backbone} --backbone-weights {task.output().path} ...")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import summary_table
    from tasks.evaluate import EvaluateModel, read_metrics

    task = EvaluateModel(checkpoint=args.checkpoint, dataset=args.dataset, out=args.out, split=args.split,
                         hand_model=args.hand_model, precision=args.precision)
    from pipeline.dataset import check_dataset
    from tasks.base import check_output_dir

    check_output_dir(args.out)
    check_dataset(args.dataset, args.split)  # clear errors before any task starts
    if not Path(args.checkpoint).is_file():
        raise HamucoError(f"{args.checkpoint}: checkpoint not found")
    from model.inference import load_model

    load_model(args.checkpoint, args.hand_model)  # a checkpoint that does not match fails here, clearly
    if not _run_luigi(args, [task], 1, args.scheduler_host, args.scheduler_port):
        return EXIT_INVALID
    print(summary_table(read_metrics(task)))
    out = task.output()
    print(f"metrics: {out['metrics'].path}  table: {out['csv'].path}")
    print(f"report: {out['report'].path}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    import torch

    from model.inference import load_model
    from pipeline.infer import infer_capture, infer_images, write_predictions
    from pipeline.provenance import code_version

    from tasks.base import check_output_dir

    out = Path(args.out)
    if out.suffix not in (".json", ".h5", ".hdf5"):
        raise HamucoError(f"{out}: --out must end in .json or .h5")
    check_output_dir(out, "--out", file=True)
    if out.is_dir():
        raise HamucoError(f"{out}: --out names a directory; give a .json or .h5 file path")
    if args.capture and args.images:
        raise HamucoError("give either --capture or images, not both")
    from model.precision import resolve_precision

    torch.set_num_threads(os.cpu_count() or 1)
    precision = resolve_precision(args.precision, "cpu")
    print(precision.line(), file=sys.stderr, flush=True)
    model, info = load_model(args.checkpoint, args.hand_model)
    overlays = out.parent / (out.stem + "_overlays") if args.overlays else None
    if args.capture:
        result = infer_capture(model, args.capture, allow_external_paths=args.allow_external_paths, use_extrinsics=not args.no_extrinsics,
                               reference_view=args.reference_view, vertices=args.vertices, overlay_dir=overlays,
                               progress=not args.quiet, precision=precision)
    elif args.images:
        result = infer_images(model, args.images, vertices=args.vertices, overlay_dir=overlays,
                              progress=not args.quiet, precision=precision)
    else:
        raise HamucoError("nothing to run on: give --capture DIR or image/video paths")
    prov = {"checkpoint": os.path.abspath(args.checkpoint), "training_step": info["step"],
            "backbone": info["architecture"]["backbone"], "code_version": code_version(),
            "precision": precision.record()}
    write_predictions(result, out, prov)
    frames = {r.prediction.coordinate_frame for r in result.records}
    print(f"wrote {out}: {len(result.records)} hand(s), frame of reference {', '.join(sorted(frames))}; "
          f"{len(result.skipped)} view(s) skipped")
    for s in result.skipped[:10]:
        print(f"  skipped {s['source']} frame {s['frame'] or '-'} {s['camera']}: {s['reason']}")
    if overlays is not None:
        print(f"overlays: {overlays}")
    return 0


def _reproduce_hanco(args: argparse.Namespace) -> int:
    from pipeline.evaluate import summary_table
    from pipeline.hanco import list_hanco_sequences
    from tasks.hanco import ReproduceHanCo

    from tasks.base import check_output_dir

    params = {"root": args.root, "out": args.out}
    if args.sequences:
        params["sequences"] = args.sequences
    for name in ("steps", "batch_size", "backbone", "backbone_weights"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    task = ReproduceHanCo(**params)  # parameters out of range are refused here, before any work
    check_output_dir(args.out)
    list_hanco_sequences(args.root)  # a clear error for a wrong root before any task starts
    if not _run_luigi(args, [task], 1, args.scheduler_host, args.scheduler_port):
        return EXIT_INVALID
    result = json.loads(Path(task.output().path).read_text())
    print(summary_table(json.loads(Path(result["metrics"]).read_text())))
    print("paper (Table C, mm):  " + ", ".join(f"{k} {v}" for k, v in result["paper_table_c"].items()))
    print(f"report: {result['report']}")
    return 0


def _shards_inspect(args: argparse.Namespace) -> int:
    from pipeline.shards import inspect_shard

    info = inspect_shard(args.file)
    print(json.dumps(info, indent=1, default=str))
    return 0


def _labels_report(args: argparse.Namespace) -> int:
    from pipeline.label_report import format_summary, label_report, write_label_report
    from tasks.base import check_output_dir

    check_output_dir(args.out)
    if not (args.threshold_px > 0):
        raise HamucoError(f"--threshold-px must be positive, got {args.threshold_px}")
    result = label_report(args.index, args.against, args.threshold_px)
    paths = write_label_report(args.out, result)
    print(format_summary(result))
    print(f"report: {paths['html']}\njson: {paths['json']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipeline.capture import load_capture
    from pipeline.synthetic import format_summary, summarize
    from pipeline.validate import validate_capture
    from tasks.prepare import Demo

    from tasks.base import check_output_dir

    check_output_dir(args.out)
    from tasks.base import option_values

    steps = {k: v for k, v in (("train_steps", args.train_steps), ("pretrain_steps", args.pretrain_steps))
             if v is not None}
    task = Demo(out=args.out, precision=args.precision, train_options=option_values(args.train_option, "--train-option"),
                **steps)
    if not _run_luigi(args, [task], args.workers, args.scheduler_host, args.scheduler_port):
        return EXIT_INVALID
    capture_dir = Path(args.out) / "capture"
    print("capture:")
    print(format_summary(summarize(load_capture(capture_dir))))
    print("validation:")
    print("  " + validate_capture(capture_dir).format(limit=20).replace("\n", "\n  "))
    result = json.loads(Path(task.output().path).read_text())
    _print_dataset(result["dataset_index"])
    run = Path(result["checkpoint"]).parent
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    from pipeline.evaluate import summary_table

    metrics = json.loads(Path(result["metrics"]).read_text())
    print(f"training: {len(rows)} steps, checkpoint {result['checkpoint']}, loss curve {run / 'loss_curve.png'}")
    precision = metrics["provenance"].get("trained_in_precision")
    if precision:
        from model.precision import PrecisionChoice

        print("  " + PrecisionChoice(**precision).line())
    for key in ("total", "joint_2d/single", "joint_2d/interaction", "consistency"):
        print(f"  {key:<22} first {rows[0][key]:.4f}  last {rows[-1][key]:.4f}")
    print(f"evaluation ({metrics['provenance']['split']} split: frames of this capture that training never saw; "
          "the untrained rows are the same network at the initialisation training started from):")
    print("  " + summary_table(metrics).replace("\n", "\n  "))
    print("what training bought (trained − untrained, mm; negative is better):")
    for line in training_gain_lines(metrics):
        print("  " + line)
    print("captures training never saw, several seeds and every baseline: RESULTS.md (make science)")
    print(f"report: {result['report']}")
    return 0


def training_gain_lines(metrics: dict) -> list[str]:
    """Per mode, the trained network's PA-MPJPE and NMPJPE against the untrained one's."""
    out = []
    for mode, t in metrics["modes"].items():
        u = metrics.get("untrained", {}).get("modes", {}).get(mode)
        if not u:
            continue
        cells = []
        for key, label in (("pa_mpjpe_mm", "PA-MPJPE"), ("nmpjpe_mm", "NMPJPE")):
            d = t[key] - u[key]
            cells.append(f"{label} {t[key]:.1f} vs {u[key]:.1f} ({d:+.1f}, {'better' if d < 0 else 'NOT better'})")
        out.append(f"{mode:<12} " + "; ".join(cells))
    return out


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _scheduler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler-host", default=None,
                   help="central luigid host (default: a local scheduler in this process); workers stay alive "
                   "while tasks they depend on run elsewhere, and stop at the first failure")
    p.add_argument("--scheduler-port", type=_int_at_least(1), default=8082)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hamuco", description="Multi-camera 3D hand pose: data "
                                     "preparation and self-supervised training (HaMuCo).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show library chatter (MediaPipe/TF-Lite, Luigi) and tracebacks of unexpected errors")

    p = sub.add_parser("synth", parents=[common], help="generate a synthetic calibrated multi-camera capture",
                       description="Render a synthetic multi-camera capture with ground truth in capture "
                       "format v1. One seed gives an identical capture.")
    p.add_argument("out", help="output capture directory (must not exist unless --overwrite)")
    p.add_argument("--cameras", type=_int_at_least(1), default=8, help="number of cameras (default 8)")
    p.add_argument("--frames", type=_int_at_least(1), default=16, help="number of frames (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--image-size", type=_int_at_least(32), default=256, help="square image size in pixels (default 256)")
    p.add_argument("--rig", choices=("ring", "dome"), default="ring", help="camera arrangement (default ring)")
    p.add_argument("--distance", type=float, default=0.65, help="camera distance in metres (default 0.65)")
    p.add_argument("--hand-model", default=None, metavar="NPZ",
                   help="converted MANO .npz (see prepare-mano); default: the built-in procedural hand")
    p.add_argument("--handedness", choices=("right", "left"), default="right")
    p.add_argument("--occluders", type=_int_at_least(0), default=0, help="number of floating occluders (default 0)")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png")
    p.add_argument("--keyframe-every", type=_int_at_least(1), default=15,
                   help="pose diversity: a new key pose every N frames, 1 = an independent pose per frame (default 15)")
    p.add_argument("--pose-prior", choices=("default", "wide"), default="default",
                   help="'wide': grasps, pinches, pointing, spread, fist and uniform poses (default: open to fist)")
    p.add_argument("--shape-sigma", type=float, default=0.8, help="spread of the hand-shape coefficients (default 0.8)")
    p.add_argument("--roll-deg", type=float, default=8.0,
                   help="each camera's roll about its axis is uniform in +-this many degrees (default 8)")
    p.add_argument("--travel", type=float, default=0.0, metavar="METRES",
                   help="the hand wanders up to this far (per axis) from the rig's centre over time, the cameras "
                   "widen their view to keep it (default 0: it stays within ~2 cm)")
    p.add_argument("--workers", type=_int_at_least(1), default=min(2, os.cpu_count() or 1),
                   help="rendering processes (default: up to 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)

    p = sub.add_parser("validate", parents=[common], help="check a capture and report every problem",
                       description="Validate a capture: reports every problem at once, each naming file, "
                       "frame and camera. Exits 1 when there are errors (warnings alone exit 0).")
    p.add_argument("capture", help="capture directory (format v1), or a HanCo root with --hanco-sequence")
    p.add_argument("--hanco-sequence", metavar="SEQ", default=None, help="validate HanCo sequence SEQ")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-images", action="store_true", help="check capture.json only, not the image files")
    p.add_argument("--allow-external-paths", action="store_true",
                   help="let capture.json name image files outside the capture directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--hand-frames", type=int, default=0, metavar="N",
                   help="also check the calibration against the hand: MediaPipe on N frames, each camera's "
                   "landmarks against the other cameras' triangulation (a wrongly calibrated camera stands out)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("import-capture", parents=[common], help="a capture from a rig's calibration file and "
                       "one video per camera", description="Write a format-v1 capture (capture.json, videos/ "
                       "linked, or copied with --copy-videos) from a calibration in anipose/FreeMoCap "
                       "(calibration.toml), EasyMocap (intri.yml + extri.yml), OpenCV FileStorage or COLMAP "
                       "(cameras.txt + images.txt) format, the videos matched to the cameras by name; then "
                       "validate it, calibration plausibility included. Exits 1 when validation finds errors.")
    p.add_argument("out", help="capture directory to create")
    p.add_argument("--videos", required=True, help="folder of <camera>.mp4 (or .avi, .mov, .mkv), or a glob pattern")
    p.add_argument("--calibration", required=True, help="calibration file (EasyMocap, COLMAP: the folder or "
                   "either file)")
    p.add_argument("--format", choices=("auto", "anipose", "easymocap", "opencv", "colmap"), default="auto")
    p.add_argument("--units", choices=("auto", "m", "cm", "mm"), default="auto",
                   help="unit of the calibration's translations (auto: metres for EasyMocap and COLMAP, guessed "
                   "from the rig's size for anipose and OpenCV files)")
    p.add_argument("--frame-offsets", default=None, metavar="CAM=N,...",
                   help="per camera, how many frames its video runs ahead of the others (capture frame k reads "
                   "video frame k + N)")
    p.add_argument("--estimate-offsets", type=int, default=0, metavar="FRAMES",
                   help="estimate the frame offsets from the hand (MediaPipe) in the first FRAMES frames of every "
                   "video: per camera the offset whose two-view triangulation with the first camera agrees best; "
                   "the error curves are printed and kept in sync.json (the hand must move)")
    p.add_argument("--max-offset", type=_int_at_least(0), default=10, help="largest offset tried (default 10)")
    p.add_argument("--every", type=_int_at_least(1), default=1, help="keep every N-th frame")
    p.add_argument("--start", type=int, default=None, help="first video frame (default: the first every video has)")
    p.add_argument("--end", type=int, default=None, help="video frame to stop before (default: the end)")
    p.add_argument("--copy-videos", action="store_true", help="copy the videos instead of linking them")
    p.add_argument("--handedness", choices=("right", "left"), default="right")
    p.add_argument("--no-images", action="store_true", help="validate capture.json and the calibration only, not "
                   "every video frame")
    p.add_argument("--hand-frames", type=int, default=0, metavar="N",
                   help="also check the calibration against the hand on N frames (MediaPipe's landmarks of each "
                   "camera against the other cameras' triangulation; a heuristic: a detector error on a hard view "
                   "reads as a calibration error too)")
    p.set_defaults(func=_import_capture)

    p = sub.add_parser("prepare-mano", parents=[common], help="convert the official MANO pickle into a plain .npz",
                       description="Convert MANO_RIGHT.pkl (chumpy objects) into an .npz that smplx loads. "
                       "The pickle is read by a restricted unpickler that admits only NumPy, scipy.sparse "
                       "and chumpy arrays. The MANO licence forbids redistribution: keep the output private.")
    p.add_argument("pickle", help="MANO_RIGHT.pkl from the MANO website")
    p.add_argument("out", help="output .npz path")
    p.set_defaults(func=_prepare_mano)

    p = sub.add_parser("prepare", parents=[common], help="captures → detection, crops, pseudo labels, refinement → HDF5 shards",
                       description="Run the data-preparation tasks (Luigi) over captures and print where the "
                       "dataset index is. Re-running with the same inputs does nothing; a different labeler "
                       "or weights file writes a new version beside the old one.")
    p.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="capture directory, or hanco:<root>#<sequence> for a HanCo sequence")
    p.add_argument("--out", required=True, help="output root directory")
    p.add_argument("--labeler", choices=("mediapipe", "openpose", "imported", "noisy-gt"), default="mediapipe",
                   help="noisy-gt: projected ground truth plus the --noise-* settings (label-noise studies)")
    p.add_argument("--noise-sigma-px", type=float, default=None, help="noisy-gt: Gaussian noise in pixels")
    p.add_argument("--noise-outlier-rate", type=float, default=None, help="noisy-gt: fraction of gross outliers")
    p.add_argument("--noise-confidence", choices=("informative", "uninformative"), default=None,
                   help="noisy-gt: whether confidence reflects the error")
    p.add_argument("--frames-per-shard", type=int, default=None, help="frames per shard (default from luigi.cfg)")
    p.add_argument("--crop-size", type=int, default=None, help="crop side in pixels (default from luigi.cfg, 256)")
    p.add_argument("--allow-external-paths", action="store_true",
                   help="let capture.json name image files outside the capture directory")
    p.add_argument("--weights", default=None, metavar="PTH",
                   help="OpenPose hand_pose_model.pth on disk (else weights_url / the cache, see luigi.cfg)")
    p.add_argument("--openpose-precision", choices=("auto", "fp32", "fast"), default=None,
                   help="OpenPose: auto (default) and fast = this machine's fastest path (bf16 on a CPU with native "
                   "bf16, NNPACK fp32 on other CPUs, fp16 on a GPU; its own label version, bench/labels.py "
                   "measures the agreement), fp32 = the published algorithm")
    p.add_argument("--refine-threshold-px", type=float, default=None, metavar="PX",
                   help="RANSAC inlier threshold of the multi-view refinement and bootstrapping, image pixels "
                   "(default 15; about 3x the labels' typical error)")
    p.add_argument("--bootstrap", action="store_true", default=None,
                   help="also write a multi-view bootstrapped label version beside the labeler's (calibrated "
                   "captures: labels that disagree with the other views' triangulation are replaced by its "
                   "reprojection, missing ones filled); train on it with hamuco train --labels bootstrapped")
    p.add_argument("--bootstrap-disagree-px", type=float, default=None, metavar="PX",
                   help="bootstrapping: replace a label farther than this from the reprojection (default 10)")
    p.add_argument("--bootstrap-min-inliers", type=int, default=None, metavar="N",
                   help="bootstrapping: views that must agree on a joint (default 3)")
    p.add_argument("--smooth", action="store_true", default=None,
                   help="bootstrapping: smooth the triangulated joints over each capture's frames first")
    p.add_argument("--smooth-window", type=int, default=None, metavar="FRAMES", help="smoothing window (default 7)")
    p.add_argument("--smooth-outlier-mm", type=float, default=None, metavar="MM",
                   help="smoothing: reject a triangulated joint this far from its neighbours' fit (default 20)")
    p.add_argument("--workers", type=_int_at_least(1), default=1, help="Luigi worker processes on this machine")
    _scheduler_options(p)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", parents=[common], help="train HaMuCo on prepared shards (self-supervised)",
                       description="Run the TrainModel task: HaMuCo on the train split of a dataset index, "
                       "with checkpoints, metrics (JSON lines) and a loss-curve PNG. An interrupted run is "
                       "resumed exactly with --resume.")
    p.add_argument("--dataset", required=True, help="dataset index from 'hamuco prepare'")
    p.add_argument("--out", required=True, help="root directory of training runs")
    p.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"), default=None)
    p.add_argument("--backbone-weights", default=None, help="imagenet, none (default) or a file path")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="view groups per step (default 8)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4)")
    p.add_argument("--seed", type=int, default=None, help="random seed: initialisation, data order, augmentation "
                   "(default 0; one seed gives identical checkpoints)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="auto (default): bf16 autocast where the CPU computes bf16 natively (AVX512_BF16/AMX), fp32 "
                   "elsewhere; the run prints its choice and records it in the checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 100)")
    p.add_argument("--hand-model", default=None, help="converted MANO .npz (default: procedural hand)")
    p.add_argument("--extrinsics", action="store_true", help="known camera rotations in the consistency loss "
                   "(the paper's training scheme 2; default: Procrustes, scheme 1)")
    p.add_argument("--confidence", choices=("refined", "raw"), default=None,
                   help="label confidence: the pipeline's refined one (default) or the labeler's raw one (the paper)")
    p.add_argument("--weak-camera", default=None, metavar="NAME", help="weakly supervised variant: this camera's "
                   "2D ground truth replaces its labels")
    p.add_argument("--gamma", type=float, default=None, help="shape prior weight (default 1, the official code)")
    p.add_argument("--points", choices=("mesh", "joints"), default=None,
                   help="3D losses on mesh vertices and joints (default, official) or joints only")
    p.add_argument("--distill-to", choices=("fused", "interaction"), default=None,
                   help="distillation target: the fused multi-view result (default, official) or the view's own "
                   "interaction output")
    p.add_argument("--aug-rotation-deg", type=float, default=None, help="augmentation: in-plane rotation of each "
                   "crop in ±DEG (labels, intrinsics and camera rotated alike; default 0)")
    p.add_argument("--aug-colour", type=float, default=None, help="augmentation: brightness/contrast/saturation "
                   "jitter strength (default 0)")
    p.add_argument("--aug-blur-prob", type=float, default=None, help="augmentation: share of crops blurred")
    p.add_argument("--aug-occlusion-prob", type=float, default=None, help="augmentation: share of crops with a "
                   "random occluder")
    p.add_argument("--initial-orientation", choices=("identity", "upright"), default=None,
                   help="global orientation the pose heads start from: the rest pose (default, official) or "
                   "turned upright as cameras see a raised hand")
    p.add_argument("--cross-view-warmup", type=int, default=None, metavar="STEPS",
                   help="consistency and distillation ramp up from 0 over these steps (default 0, official)")
    p.add_argument("--articulation", choices=("full", "pca"), default=None,
                   help="pose heads: 16 free rotations (default, official) or the global orientation and "
                   "--pca-components coefficients around the mean pose")
    p.add_argument("--pca-components", type=int, default=None, help="principal components of --articulation pca "
                   "(default 12)")
    p.add_argument("--single-view-input", choices=("gap", "keypoints", "joint_features"), default=None,
                   help="what the single view's heads read: the pooled backbone features (gap, default, official) "
                   "or beside them the 21 joints of a keypoint head (keypoints), or beside both the backbone's "
                   "features sampled at those joints (joint_features)")
    p.add_argument("--keypoint-head-weights", default=None, metavar="PATH",
                   help="with --single-view-input keypoints or joint_features: a 2D pretraining's checkpoint-final.pt (hamuco "
                   "pretrain) that starts the keypoint head (default: the head starts at random)")
    p.add_argument("--view-keep-prob", type=float, default=None,
                   help="view masking in the cross-view branch: probability of keeping each other view "
                   "(default 0.5; 1 = off, the official code)")
    p.add_argument("--view-keep-anneal-steps", type=int, default=None, metavar="STEPS",
                   help="the keep probability rises linearly to 1 over these steps (default 0: constant)")
    p.add_argument("--labels", choices=("raw", "bootstrapped"), default=None,
                   help="label version: the labeler's (raw, default) or the multi-view bootstrapped one (a dataset "
                   "prepared with --bootstrap)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant", "warmup-cosine"), default=None,
                   help="learning-rate schedule (default cosine to 0 over the run)")
    p.add_argument("--lr-warmup-steps", type=int, default=None, metavar="STEPS",
                   help="linear warm-up of --lr-schedule warmup-cosine")
    p.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                   help="clip the gradients' total norm to NORM before each step (default 0: off, the official code)")
    p.add_argument("--validate-every", type=int, default=None, metavar="N",
                   help="validation pass every N steps on frames training never uses (default 100; 0 off): "
                   "validation.jsonl, TensorBoard event files, checkpoint-best.pt")
    p.add_argument("--val-dataset", default=None, help="dataset index of the validation pass (default: the "
                   "dataset's val split)")
    p.add_argument("--val-samples", type=int, default=None, help="view groups of the validation pass (default 16)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    _scheduler_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("pretrain", parents=[common], help="pretrain a backbone on the 2D pseudo labels alone",
                       description="Run the PretrainBackbone task: a ResNet with a heatmap head learns the 2D pseudo "
                       "labels of a dataset's train split (no 3D, no ground truth: still self-supervised); writes "
                       "backbone.pt for 'hamuco train --backbone-weights'.")
    p.add_argument("--dataset", required=True, help="dataset index from 'hamuco prepare'")
    p.add_argument("--out", required=True, help="root directory of pretraining runs")
    p.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"), default=None,
                   help="default resnet18")
    p.add_argument("--steps", type=_int_at_least(1), default=None, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=None, help="view groups per step (default 4)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None, help="default auto")
    p.add_argument("--labels", choices=("raw", "bootstrapped"), default=None,
                   help="label version (default raw; bootstrapped: a dataset prepared with --bootstrap)")
    p.add_argument("--confidence", choices=("refined", "raw"), default=None, help="label confidence (default refined)")
    p.add_argument("--aug-rotation-deg", type=float, default=None, help="augmentation: in-plane rotation, +-degrees")
    p.add_argument("--aug-colour", type=float, default=None, help="augmentation: colour jitter strength")
    _scheduler_options(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("evaluate", parents=[common], help="metrics, baselines and an HTML report for a checkpoint",
                       description="Run the EvaluateModel task: the three modes (single, interaction, fusion) "
                       "and per view, the pseudo-label and triangulation baselines, as JSON and CSV, and a "
                       "self-contained report.html.")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt)")
    p.add_argument("--dataset", required=True, help="dataset index with ground truth")
    p.add_argument("--out", required=True, help="root directory of evaluations")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--hand-model", default=None, help="converted MANO .npz the run was trained with")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the network's forward: auto (default) = bf16 autocast where the CPU computes bf16 "
                   "natively (AVX512_BF16/AMX), fp32 elsewhere")
    _scheduler_options(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("infer", parents=[common], help="3D hands from a capture, or from images and videos in the wild",
                       description="Run a trained network on new data. A capture (any number of views): the "
                       "fused hand in the world frame when the cameras are calibrated, else in the reference "
                       "view's camera frame. Images/videos: every hand found, each as one view; left hands are "
                       "mirrored for the network and mirrored back.")
    p.add_argument("images", nargs="*", help="images, videos or directories of them")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt)")
    p.add_argument("--capture", default=None, help="capture directory or hanco:<root>#<seq>")
    p.add_argument("--out", required=True, help="predictions file: .json or .h5")
    p.add_argument("--no-extrinsics", action="store_true", help="ignore the capture's extrinsics")
    p.add_argument("--reference-view", default=None, help="camera name whose frame holds the result "
                   "without extrinsics (default: the first view with a hand)")
    p.add_argument("--vertices", action="store_true", help="also write the mesh vertices")
    p.add_argument("--overlays", action="store_true", help="write the predicted skeleton over the inputs (PNG)")
    p.add_argument("--hand-model", default=None, help="converted MANO .npz the run was trained with")
    p.add_argument("--allow-external-paths", action="store_true",
                   help="let capture.json name image files outside the capture directory")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the network's forward: auto (default) = bf16 autocast where the CPU computes bf16 "
                   "natively (AVX512_BF16/AMX), fp32 elsewhere")
    p.set_defaults(func=_infer)

    p = sub.add_parser("reproduce-hanco", parents=[common], help="the paper's HanCo experiment: prepare, train, evaluate",
                       description="Prepare HanCo with its imported HaMuCo pseudo labels, train as the paper "
                       "(settings in configs/hanco-paper.cfg: LUIGI_CONFIG_PATH=configs/hanco-paper.cfg) and "
                       "evaluate on sequences >= 1200.")
    p.add_argument("--root", required=True, help="HanCo root directory")
    p.add_argument("--out", required=True)
    p.add_argument("--sequences", nargs="*", default=None, help="sequence ids (default: all)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"), default=None)
    p.add_argument("--backbone-weights", default=None, help="imagenet (default), none or a file path")
    _scheduler_options(p)
    p.set_defaults(func=_reproduce_hanco)

    p = sub.add_parser("labels", help="pseudo-label quality")
    labels_sub = p.add_subparsers(dest="labels_command", required=True, metavar="SUBCOMMAND")
    q = labels_sub.add_parser("report", parents=[common], help="label quality per version, capture, camera and joint "
                              "(HTML + JSON)", description="Per label version of a dataset index (raw, "
                              "bootstrapped): reprojection error after triangulation, outlier views and misses, "
                              "and with ground truth the 2D error, PCK at 2/5/10 px, a reliability table and the "
                              "PA-MPJPE of triangulating the labels; with --against, another dataset index of the "
                              "same captures side by side.")
    q.add_argument("index", help="dataset index (JSON) from hamuco prepare")
    q.add_argument("--out", required=True, help="directory for labels_report.html and labels_report.json")
    q.add_argument("--against", default=None, metavar="OTHER_INDEX",
                   help="a dataset index of other labels of the same captures (another labeler or version)")
    q.add_argument("--threshold-px", type=float, default=15.0, help="RANSAC threshold of the triangulation, "
                   "image px (default 15, the refinement's)")
    q.set_defaults(func=_labels_report)

    p = sub.add_parser("shards", help="work with HDF5 shards")
    shards_sub = p.add_subparsers(dest="shards_command", required=True, metavar="SUBCOMMAND")
    q = shards_sub.add_parser("inspect", parents=[common], help="schema version, attributes, sample count, label statistics")
    q.add_argument("file", help="a shard (.h5)")
    q.set_defaults(func=_shards_inspect)

    p = sub.add_parser("demo", parents=[common], help="run the main job on the embedded synthetic capture",
                       description="Generate the embedded 8-camera synthetic capture, validate it, prepare "
                       "it (detection, crops, MediaPipe labels, refinement, shards, dataset index) and train "
                       "HaMuCo briefly on it. Work already done is not repeated.")
    p.add_argument("--out", default="demo_output", help="output directory (default demo_output)")
    p.add_argument("--workers", type=_int_at_least(1), default=1, help="Luigi worker processes")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training and evaluation: auto (default) = bf16 autocast where the CPU computes bf16 "
                   "natively (AVX512_BF16/AMX), fp32 elsewhere")
    p.add_argument("--train-option", action="append", default=[], metavar="OPTION=VALUE",
                   help="a further training option (a TrainModel parameter, e.g. articulation=pca, "
                   "pca_components=20, initial_orientation=upright); repeatable")
    p.add_argument("--train-steps", type=_int_at_least(1), default=None, help="training steps (default 300)")
    p.add_argument("--pretrain-steps", type=_int_at_least(0), default=None,
                   help="first pretrain the backbone this many steps on the demo's 2D pseudo labels and train from "
                   "it (with --train-option single_view_input=keypoints also its keypoint head; default 0: none)")
    _scheduler_options(p)
    p.set_defaults(func=_demo)
    return parser


def _os_error_message(exc: OSError) -> str:
    """One line for an OS error: the path and what is wrong with it, in words."""
    import errno

    path = exc.filename or ""
    words = {errno.EEXIST: "a file is in the way (a directory was expected)",
             errno.ENOTDIR: "a file is in the way (a directory was expected)",
             errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
             errno.ENOENT: "no such file or directory", errno.EISDIR: "is a directory (a file was expected)"}
    what = words.get(exc.errno, exc.strerror or str(exc))
    return f"{path}: {what}" if path else what


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HamucoError as exc:
        print(f"hamuco {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # unwritable output, a file where a directory should be, a full disk
        print(f"hamuco {args.command}: error: {_os_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_native_output() -> None:
    """Send what C/C++ libraries write straight to file descriptor 2 (MediaPipe, TF-Lite, absl,
    libjpeg) to /dev/null, and give Python's ``sys.stderr`` (our messages, progress bars, Luigi's
    errors) a duplicate of the real stderr. Worker processes forked later inherit both."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                               errors="backslashreplace")
    except OSError:
        pass


def console_main() -> int:
    """The ``hamuco`` program: quiet unless ``--verbose`` (library chatter off, our messages on)."""
    import warnings

    if "--verbose" not in sys.argv[1:]:
        _quiet_native_output()
        warnings.simplefilter("ignore")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GLOG_minloglevel", "2")
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
