"""``segany export decoder|encoder``: write ONNX graphs of a model, checked against torch on the way out."""

from __future__ import annotations

import argparse


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

    model = load_model(args.checkpoint or args.model)
    if args.part == "encoder":
        report = export_encoder(model, args.output, quantize=args.quantize)
        print(f"wrote {report.path} ({report.bytes / 2**20:.1f} MiB)")
        return 0
    report = export_decoder(
        model, args.output, multimask=args.multimask, batched=args.batched,
        upsample=not args.low_res_only, quantize=args.quantize,
    )
    line = f"wrote {report.path} ({report.bytes / 2**20:.1f} MiB)"
    if not args.no_verify and not args.batched:
        check = verify_decoder(model, report.path, multimask=args.multimask)
        line += f"; vs torch: max |logit diff| {check.max_abs_diff:.2e}, mask IoU {check.mask_iou:.4f}"
    print(line)
    return 0
