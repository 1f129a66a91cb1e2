"""`python -m fp8pipe.demo`: train the demo model, score its prompt adherence, draw a grid."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from .train import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m fp8pipe.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the VAE, then the transformer; write the model folder")
    for f in dataclasses.fields(TrainConfig):
        t.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    from .lora_train import LoraTrainConfig

    lt = sub.add_parser("train-lora", help="train the demo LoRA (house style: no background named means black) on the shipped demo model")
    for f in dataclasses.fields(LoraTrainConfig):
        lt.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    e = sub.add_parser("eval", help="held-out prompt adherence per precision, and FP8-vs-FP32 PSNR")
    e.add_argument("--model", default="demo", help="the model to score (default demo)")
    e.add_argument("--limit", type=int, default=0, help="score N held-out prompts spread over the set (default 0: all 40, as the README table)")
    e.add_argument("--precisions", default="fp32,bf16,fp8", help="comma-separated (default fp32,bf16,fp8: the README table's rows)")
    e.add_argument("--json", action="store_true", help="print the report on one line")
    e.add_argument("--save", action="store_true", help="write eval.json (with --lora: the LoRA's <name>.eval.json) into the shipped model folder and refresh its model card")
    e.add_argument("--lora", nargs="?", const="shipped", default=None, metavar="FILE",
                   help="score a LoRA on the house-style prompts instead (no FILE: the shipped demo LoRA); rows fp32 without it, fp32, fp8 runtime, fp8 merge")
    g = sub.add_parser("grid", help="a grid of the demo model's pictures")
    g.add_argument("--out", default="docs/demo_grid.png")
    g.add_argument("--model", default="demo")
    g.add_argument("--precision", default="fp8")
    args = parser.parse_args(argv)

    if args.command == "train":
        from .train import train

        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
        print(train(cfg))
        return 0
    if args.command == "train-lora":
        from .lora_train import train_lora

        print(train_lora(LoraTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LoraTrainConfig)})))
        return 0
    if args.command == "eval" and args.lora:
        from .adherence import evaluate_lora
        from .lora_train import LORA_DIR, LORA_NAME

        path = LORA_DIR / f"{LORA_NAME}.safetensors" if args.lora == "shipped" else args.lora
        report = evaluate_lora(str(path), model=args.model, limit=args.limit, progress=True)
        print(json.dumps(report, indent=None if args.json else 2))
        if args.save:
            from .card import rewrite_model_card
            from .train import MODEL_DIR

            (LORA_DIR / f"{report['lora']}.eval.json").write_text(json.dumps(report, indent=2) + "\n")
            print(rewrite_model_card(MODEL_DIR), file=sys.stderr)
        return 0
    if args.command == "eval":
        from .adherence import evaluate

        report = evaluate(args.model, precisions=tuple(args.precisions.split(",")), limit=args.limit, progress=True)
        print(json.dumps(report, indent=None if args.json else 2))
        if args.save:
            from .card import rewrite_model_card
            from .train import MODEL_DIR

            (MODEL_DIR / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
            print(rewrite_model_card(MODEL_DIR), file=sys.stderr)
        return 0
    if args.command == "grid":
        from .adherence import write_grid

        print(write_grid(args.out, model=args.model, precision=args.precision))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
