"""``segany annotate IMAGES --out DIR``: label a folder from prompt files or with "segment everything".

Exit codes: 0 every image labelled, 1 some images skipped (listed in the summary), 2 bad usage, 3 server or model
unavailable, 130 interrupted (finished images are kept; re-run to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import sys
import threading
from pathlib import Path

from segany.errors import InvalidInputError

#: The generator's parameters exposed as options: (option, settings field, type).
AMG_OPTIONS = (
    ("--points-per-side", "points_per_side", int),
    ("--points-per-batch", "points_per_batch", int),
    ("--pred-iou-thresh", "pred_iou_thresh", float),
    ("--stability-score-thresh", "stability_score_thresh", float),
    ("--stability-score-offset", "stability_score_offset", float),
    ("--box-nms-thresh", "box_nms_thresh", float),
    ("--crop-n-layers", "crop_n_layers", int),
    ("--crop-nms-thresh", "crop_nms_thresh", float),
    ("--crop-overlap-ratio", "crop_overlap_ratio", float),
    ("--crop-n-points-downscale-factor", "crop_n_points_downscale_factor", int),
    ("--min-mask-region-area", "min_mask_region_area", int),
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="label a folder of images (prompts from a file, or segment everything) into COCO / YOLO-seg / PNG",
        description="Label images from prompt files (JSONL, COCO detections, YOLO txt) or with automatic mask "
        "generation. Resumable: re-run the same command to continue after an interruption.",
    )
    p.add_argument("images", metavar="IMAGES", help="a folder (recursive), a glob pattern, a list file or an image")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder; DIR/annotations.json is the COCO file")
    what = p.add_argument_group("what to segment (one of)")
    what.add_argument("--prompts", metavar="FILE", help="prompts: .jsonl, COCO detections .json, or a YOLO txt folder")
    what.add_argument("--everything", action="store_true", help="automatic mask generation (segment everything)")
    out = p.add_argument_group("outputs")
    out.add_argument("--format", default="coco", help="comma-separated subset of coco,yolo,png (default: coco)")
    out.add_argument("--png-mode", choices=("index", "objects"), default="index",
                     help="png: one indexed PNG per image (default) or one PNG per object")
    out.add_argument("--polygons", action="store_true", help="add polygons with holes to COCO annotations")
    out.add_argument("--overlay", action="store_true", help="write preview PNGs (masks over the image) to DIR/overlays")
    model = p.add_argument_group("model")
    which = model.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="NAME", help="zoo model name (default: the shipped segany-lite)")
    which.add_argument("--checkpoint", metavar="PATH", help="checkpoint file (SAM / MobileSAM / segany)")
    model.add_argument("--server", metavar="ADDR", help="use a running `segany serve` at host:port instead")
    model.add_argument("--token", help="bearer token for --server (or SEGANY_AUTH_TOKEN)")
    model.add_argument("--precision", choices=("fast", "exact"), default="fast",
                       help="fast (default) or exact (fp32, same masks as the public SAM implementation)")
    model.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda or cuda:N")
    run = p.add_argument_group("run")
    run.add_argument("--workers", type=int, default=2, help="image loader threads (default 2)")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    run.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
                     help="rebuild annotations.json this often during the run (default 30)")
    run.add_argument("--durable", action="store_true", help="fsync every output file (survives power loss)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")
    amg = p.add_argument_group("segment everything (public SamAutomaticMaskGenerator parameters and defaults)")
    for option, _, kind in AMG_OPTIONS:
        amg.add_argument(option, type=kind, default=None)
    p.set_defaults(func=run_annotate)


def _formats(text: str) -> tuple[str, ...]:
    from segany.annotate.exporters import FORMATS

    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InvalidInputError(f"--format takes a comma-separated subset of {','.join(FORMATS)}, got {text!r}")
    return formats


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_annotate(args: argparse.Namespace) -> int:
    from segany.runtime import tune_process

    tune_process()  # OMP_WAIT_POLICY=PASSIVE and malloc reuse, before torch starts; the environment wins
    from dataclasses import asdict

    from segany.annotate.exporters import Exporter
    from segany.annotate.inputs import discover_images
    from segany.annotate.journal import Journal
    from segany.annotate.pipeline import Annotator
    from segany.annotate.sources import everything_categories, load_prompts
    from segany.everything import EverythingSettings

    if bool(args.prompts) == bool(args.everything):
        raise InvalidInputError("give exactly one of --prompts FILE and --everything")
    amg_given = {field: getattr(args, field) for _, field, _ in AMG_OPTIONS if getattr(args, field) is not None}
    if amg_given and not args.everything:
        raise InvalidInputError(f"{', '.join(sorted(amg_given))} apply to --everything only")
    if args.server and (args.model or args.checkpoint):
        raise InvalidInputError("--server uses the server's model; drop --model/--checkpoint")
    if args.token and not args.server:
        raise InvalidInputError("--token is for --server")
    if args.server and args.device != "cpu":
        raise InvalidInputError("--server uses the server's device; drop --device")
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise InvalidInputError("--workers and --threads must be >= 1")
    if not args.checkpoint_every >= 0:  # 0: after every image
        raise InvalidInputError(f"--checkpoint-every must be a number of seconds >= 0, got {args.checkpoint_every}")
    formats = _formats(args.format)
    out_dir = Path(args.out).expanduser()
    items = discover_images(args.images, exclude=out_dir)
    if "yolo" in formats or "png" in formats or args.overlay:
        _refuse_shared_output_names([i.name for i in items])
    everything = EverythingSettings(**amg_given) if args.everything else None
    source = load_prompts(args.prompts) if args.prompts else None
    if source is not None and (shared := source.shared_keys([i.name for i in items])):
        key, names = next(iter(shared.items()))
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise InvalidInputError(f"the prompt entry {key!r} would be taken by {len(names)} images ({listed}): name "
                                "the images by their paths in the prompts")
    categories = source.categories if source else everything_categories()

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.server:
        from segany.annotate.backends import ServerBackend

        backend = ServerBackend(args.server, everything, token=args.token or os.environ.get("SEGANY_AUTH_TOKEN"))
        device_kind = "cpu"  # the server's business
        model_id = f"server:{args.server}"
    else:
        import segany
        from segany.annotate.backends import LocalBackend
        from segany.models import to_device

        model = to_device(segany.load_model(args.checkpoint or args.model), args.device)
        device_kind = next(model.parameters()).device.type
        backend = LocalBackend(segany.Predictor(model, precision=args.precision), everything)
        model_id = model.fingerprint
    prompts = None
    if source is not None:
        prompts = {"sha256": _file_digest(Path(args.prompts))}  # contents, not the path: cwd may change
    amg = None if everything is None else {k: v for k, v in asdict(everything).items() if k != "point_grids"}
    settings = {
        "model": model_id,
        "precision": None if args.server else args.precision,
        # a GPU rounds differently from the CPU (not one GPU from another): its kind joins the settings; CPU runs
        # record none, as before the option existed
        **({"device": device_kind} if device_kind != "cpu" else {}),
        "prompts": prompts,
        "everything": amg,
        "formats": sorted(formats),  # the order they were listed in changes nothing
        "png_mode": args.png_mode,
        "polygons": args.polygons,
        "overlay": args.overlay,
    }
    journal = Journal(out_dir, settings, durable=args.durable)
    journal.open()
    exporter = Exporter(out_dir, formats, categories, args.png_mode, args.polygons, args.overlay, args.durable)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    annotator = Annotator(
        items, backend, exporter, journal, source, workers=args.workers,
        checkpoint_seconds=args.checkpoint_every, progress=progress,
    )
    with _sigterm_interrupts():  # `timeout`, `docker stop`, a batch scheduler: finish like Ctrl-C (exit 130)
        summary = annotator.run()
    for line in summary.lines():
        print(f"segany annotate: {line}" if not line.startswith("  ") else line, file=sys.stderr)
    written = [str(out_dir / "annotations.json")] if "coco" in formats else []
    written += [str(out_dir / d) + "/" for d, on in (("labels", "yolo" in formats), ("masks", "png" in formats),
                                                     ("overlays", args.overlay)) if on]
    print(f"segany annotate: outputs: {', '.join(written)}", file=sys.stderr)
    return summary.exit_code


def _refuse_shared_output_names(names: list[str]) -> None:
    """Per-image outputs are named after the image without its suffix: ``a.png`` and ``a.jpg`` would overwrite each
    other's label and mask files."""
    from segany.annotate.inputs import name_stem

    seen: dict[str, str] = {}
    for name in names:
        stem = name_stem(name)
        if stem in seen:
            raise InvalidInputError(f"{seen[stem]} and {name} would write the same per-image outputs ({stem}.*): "
                                    "rename one, or label them in separate runs")
        seen[stem] = name


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt in the main thread while the run lasts, so it ends as Ctrl-C does: the COCO
    file rebuilt from the finished records, the summary written, exit code 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
