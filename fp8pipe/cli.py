"""Command line: generate, quantize, policy, plan (fp8pipe.memory), bench (fp8pipe.bench), soak and load (fp8pipe.soak), check (fp8pipe.check), serve (fp8pipe.cluster).

Errors a user can fix (a bad model path, a setting out of range) print one clear message
and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")


def _add_load_options(p: argparse.ArgumentParser) -> None:
    from .loader import FP8_PATH_CHOICES, PRECISIONS, T5_MODES

    p.add_argument("--model", default="demo", help="demo (default), a hub id, a diffusers folder, a .safetensors file or an fp8pipe checkpoint")
    p.add_argument("--precision", default="fp8", choices=PRECISIONS, help="transformer precision (default fp8)")
    p.add_argument(
        "--t5", default="auto", choices=("auto", *T5_MODES), help="T5-XXL: auto (default: the planner's choice for the budget, as in the app), 16-bit, fp8 weight-only, on the CPU, or dropped"
    )
    p.add_argument("--fp8-path", default="auto", choices=FP8_PATH_CHOICES, help="FP8 execution: scaled matmul or upcast (default auto: picks by device)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--base", default=None, help="for a single transformer file: the folder or hub id that provides text encoders and VAE (default: the family's hub id)")


def check_out_file(out: str) -> None:
    """--out must name a file that can be written (checked before any model is loaded)."""
    from pathlib import Path

    if not out or not out.strip():
        raise ValueError("--out: must name a PNG file, e.g. --out image.png")
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        raise ValueError(f"--out: {out} is a folder; name a file in it, e.g. {path / 'image.png'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot write in {parent}; choose a folder you can write to")


def resolve_device_flag(device: str) -> None:
    """--device must name a device this machine has (checked before any model is loaded)."""
    from .loader import resolve_device

    resolve_device(device)


def generation_engine(args, loras=()):
    """The engine `generate` runs on: the same planner, pool and stats as the app (no warm-up,
    no worker thread: the job runs inline). `--vram` is the budget the plan is made for."""
    from dataclasses import replace

    from .engine import Engine
    from .loader import load_model

    def loader(model, options):
        loaded = load_model(model, replace(options, base=args.base))
        if loaded.origins:  # a single file: say which components it provided and which came from --base
            from_file = [k for k, v in loaded.origins.items() if v == "file"]
            from_base = [k for k, v in loaded.origins.items() if v == "base"]
            print(f"from {args.model}: transformer{''.join(', ' + k for k in from_file)}; from the base: {', '.join(from_base)}", file=sys.stderr)
        return loaded

    return Engine(device=args.device, vram_budget=args.vram, warmup=False, fp8_path=args.fp8_path, loader=loader, t5=args.t5, loras=loras, lora_mode=args.lora_mode)


def _serve(engine, request, args):
    """The one request path (fp8pipe.serving.serve_request), inline; steps on stderr."""
    from . import serving

    result = None
    for item in serving.serve_request(engine, request, args.model, args.precision, inline=True):
        if isinstance(item, serving.Progress) and not args.json:
            print(f"\rstep {item.step}/{item.total}", end="", file=sys.stderr, flush=True)
        elif isinstance(item, serving.Result):
            result = item
    if not args.json:
        print(file=sys.stderr)
    return result


def cmd_generate(args) -> int:
    from .serving import public_stats
    from .specs import find_spec

    fields = dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        width=args.width,
        height=args.height,
        shift=args.shift,
    )
    from .lora import check_lora_files, parse_lora_arg

    check_out_file(args.out)
    loras = [parse_lora_arg(text) for text in args.lora]
    check_lora_files(loras)  # a missing file or bad strength fails before the model is read
    resolve_device_flag(args.device)
    if args.vram is not None:
        from .memory import parse_size

        parse_size(args.vram)  # a bad budget fails before any weights are read
    engine = generation_engine(args, loras)
    try:
        if find_spec(args.model) is not None:
            request = engine.request(args.model, **fields)  # a bad setting fails before gigabytes of weights are read
        else:  # a custom model: its own limits and defaults are known once it is loaded
            engine.start(models=[(args.model, args.precision)])
            request = engine.request(args.model, **fields)
        if args.seed is None:
            print(f"seed {request.seed} (random; --seed {request.seed} repeats this picture)", file=sys.stderr)
        result = _serve(engine, request, args)
    finally:
        engine.close()
    if result.stats.get("random_weights"):
        print("note: the demo model has random weights (the trained demo model is missing from this checkout): images are noise patterns.", file=sys.stderr)
    try:
        path = result.save_png(args.out)
    except OSError as e:
        from .outputs import describe_os_error

        raise ValueError(f"--out: could not write {args.out}: {describe_os_error(e)}; nothing was written") from None
    stats = public_stats(result)
    for entry in stats.get("loras") or []:
        print(f"lora {entry['name']} ({entry['layout']}, strength {entry['strength']:g}, {stats['lora_mode']}): {entry['matched']} modules matched, {entry['layers']} layers", file=sys.stderr)
    if args.json:
        print(json.dumps(stats))
    else:
        plan = stats["plan"]
        print(f"wrote {path} ({request.width}x{request.height}, {request.steps} steps, seed {request.seed}) in {stats['latency_s']:.2f} s; plan {plan['placement']}, T5 {plan['t5']}")
    return 0


def cmd_quantize(args) -> int:
    from pathlib import Path

    from .checkpoint import save_fp8_checkpoint
    from .fp8 import TRANSFORMER_POLICY
    from .loader import LoadOptions, load_model

    loaded = load_model(args.model, LoadOptions(precision="fp8", fp8_path="upcast", device=args.device, base=args.base))
    out = save_fp8_checkpoint(loaded.pipe, Path(args.out), TRANSFORMER_POLICY, source=args.model, spec_name=loaded.spec.name)
    report = loaded.fp8.as_dict()
    print(json.dumps({"out": str(out), "quantized_layers": report["quantized_layers"], "fp8_weight_bytes": report["fp8_weight_bytes"], "other_bytes": report["other_bytes"]}))
    return 0


def cmd_policy(args) -> int:
    from .errors import ModelLoadError
    from .loader import transformer_report_on_meta
    from .specs import find_spec

    spec = find_spec(args.model)
    if spec is None:
        raise ModelLoadError(f"unknown model family {args.model!r}", fix="use sd3.5-large, sd3.5-large-turbo, sd3.5-medium or demo")
    report = {"model": spec.name, **transformer_report_on_meta(spec.transformer_config)}
    if args.json:
        print(json.dumps(report))
        return 0
    gib = 2**30
    print(f"{spec.name}: {report['parameters'] / 1e9:.2f} B parameters")
    print(f"  FP8 policy quantizes {report['quantized_layers']} Linear layers (patterns {report['policy']['quantize']})")
    print(f"  keeps {len(report['kept_linear_layers'])} Linear layers in 16-bit: {', '.join(report['kept_linear_layers'])}")
    print(f"  weights: {report['fp8_bytes'] / gib:.2f} GiB FP8 against {report['bf16_bytes'] / gib:.2f} GiB BF16 ({report['fp8_over_bf16']:.3f}x)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fp8pipe", description="Stable Diffusion 3.5 with an FP8 transformer")
    sub = parser.add_subparsers(dest="command", required=True)

    from .specs import SPECS

    def per_model(attr: str) -> str:
        return "default: the model's: " + ", ".join(f"{spec.name} {getattr(spec, attr)}" for spec in SPECS.values())

    g = sub.add_parser("generate", help="write one image as a PNG with its parameters")
    g.add_argument("--prompt", required=True, help="what to draw (the demo model knows only the words of its captions: see the README)")
    g.add_argument("--negative-prompt", default="", help="what to steer away from (default: none)")
    g.add_argument("--out", required=True, help="the PNG file to write")
    g.add_argument("--steps", type=int, default=None, help=f"denoising steps ({per_model('steps')})")
    g.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale ({per_model('guidance')})")
    g.add_argument("--seed", type=int, default=None, help="0 to 4294967295; the same seed gives the same picture (default: a random seed, printed)")
    g.add_argument("--width", type=int, default=None, help=f"pixels, a multiple of 16 ({per_model('resolution')})")
    g.add_argument("--height", type=int, default=None, help="pixels, a multiple of 16 (default: the model's, as for --width)")
    g.add_argument("--shift", type=float, default=None, help=f"timestep shift of the flow-matching schedule ({per_model('shift')})")
    g.add_argument("--json", action="store_true", help="print the stats as one JSON object (the app's and the API's schema, with the plan it ran)")
    g.add_argument("--vram", default=None, help="VRAM budget the plan is made for, e.g. 8GiB (default: the GPU's free memory); on a CPU the plan is reported, everything stays in host RAM")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]", help="a LoRA .safetensors file (diffusers/PEFT, kohya or ComfyUI keys) and its strength, -4 to 4 (default 1); repeatable")
    g.add_argument("--lora-mode", default="auto", choices=("auto", "runtime", "merge"), help="runtime: the LoRA computed in 16-bit beside the FP8 matmul; merge: folded into the weights and re-quantized; auto: the planner picks (default; fixed LoRAs are merged)")
    _add_load_options(g)
    g.set_defaults(func=cmd_generate)

    q = sub.add_parser("quantize", help="write an FP8 checkpoint (safetensors only) that --model DIR loads")
    q.add_argument("--model", required=True, help="what to quantize: a hub id or family name, a diffusers folder, a .safetensors file")
    q.add_argument("--out", required=True, help="the checkpoint folder to write (created)")
    q.add_argument("--device", default="auto", help="where the weights are quantized as they arrive: auto (default), cpu, cuda")
    q.add_argument("--base", default=None, help="for a single transformer file: the folder or hub id with the text encoders and VAE (default: the family's hub id)")
    q.set_defaults(func=cmd_quantize)

    p = sub.add_parser("policy", help="what the FP8 policy quantizes and keeps for a model family, and the bytes (no download, no memory)")
    p.add_argument("--model", default="sd3.5-large", help="a model family: sd3.5-large (default), sd3.5-large-turbo, sd3.5-medium, demo")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_policy)

    from .bench import add_bench_command
    from .check import add_check_command
    from .memory import add_plan_command
    from .soak import add_soak_commands

    add_plan_command(sub)
    add_bench_command(sub)
    add_soak_commands(sub)
    add_check_command(sub)
    from .cluster.command import add_serve_command

    add_serve_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from .errors import ModelLoadError
    from .requests import RequestError

    try:
        return args.func(args)
    except (ModelLoadError, RequestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
