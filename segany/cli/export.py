"""``segany export decoder|encoder``: write ONNX graphs of a model (the public-interface decoder is checked against
torch on the way out)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from segany.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export the decoder (or encoder) to ONNX", description=__doc__)
    parser.add_argument("part", choices=["decoder", "encoder"])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="zoo variant (default: the shipped model)")
    source.add_argument("--checkpoint", help="path to a checkpoint file")
    parser.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    parser.add_argument("--multimask", action="store_true", help="decoder: return all masks, not the best one")
    parser.add_argument("--batched", action="store_true", help="decoder: add a prompt-batch axis")
    parser.add_argument("--low-res-only", action="store_true", help="batched decoder: no upsampling in the graph")
    parser.add_argument("--quantize", action="store_true", help="dynamic int8 weights")
    parser.add_argument("--no-verify", action="store_true", help="skip the check against torch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segany.models import load_model
    from segany.onnx import export_decoder, export_encoder, verify_decoder

    _check_options(args)
    output = _writable_output(Path(args.output))  # before loading and tracing the model (a minute for vit_h)
    model = load_model(args.checkpoint or args.model)
    try:
        if args.part == "encoder":
            report = export_encoder(model, output, quantize=args.quantize)
            print(f"wrote {report.path} ({report.bytes / 2**20:.1f} MiB)")
            return 0
        report = export_decoder(
            model, output, multimask=args.multimask, batched=args.batched,
            upsample=not args.low_res_only, quantize=args.quantize,
        )
    except OSError as exc:  # the disk filled up, or the folder went away meanwhile
        raise InvalidInputError(f"cannot write {output}: {exc.strerror or exc}") from None
    line = f"wrote {report.path} ({report.bytes / 2**20:.1f} MiB)"
    if not args.no_verify and not args.batched:
        check = verify_decoder(model, report.path, multimask=args.multimask)
        line += f"; vs torch: max |logit diff| {check.max_abs_diff:.2e}, mask IoU {check.mask_iou:.4f}"
    print(line)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Options that do not apply to what is exported are refused, not ignored."""
    decoder_only = [flag for flag, on in (("--multimask", args.multimask), ("--batched", args.batched),
                                           ("--low-res-only", args.low_res_only)) if on]
    if args.part == "encoder" and decoder_only:
        raise InvalidInputError(f"{', '.join(decoder_only)} only apply to `segany export decoder`")
    if args.low_res_only and not args.batched:
        raise InvalidInputError("--low-res-only applies to the batched decoder: add --batched (the public-interface "
                                "decoder always returns masks at the original size)")


def _writable_output(path: Path) -> Path:
    """``path`` if an ONNX file can be written there (its folder is made), else InvalidInputError naming why."""
    if path.is_dir():
        raise InvalidInputError(f"--output {path} is a folder; give the .onnx file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create the folder of --output {path}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidInputError(f"cannot write --output {path}: permission denied")
    return path
