"""`python -m fp8pipe plan`: the plan for a budget, a named card or a preset, printed or as JSON.

Every latency it prints is a prediction (fp8pipe/latency.py) with its floor beside it.
"""

from __future__ import annotations

from .cards import CARDS, find_card
from .placement import choose_attention
from .probe import probed_card
from .planner import DEFAULT_CARD, free_vram_bytes, host_ram_bytes, plan_as_run, planner_table, table_markdown
from .sizes import PRECISIONS, T5_PLACEMENTS, GiB, Workload, format_size, parse_size
from .specs import SPECS

PLAN_KEYS = (
    "kind",
    "card",
    "model",
    "precision",
    "execution",
    "predicted_latency_s",
    "floor_latency_s",
    "predicted_step_s",
    "placement",
    "resident_blocks",
    "streamed_bytes_per_step",
    "predicted_peak_vram_bytes",
    "predicted_peak_host_bytes",
    "vram_budget_bytes",
    "t5",
    "vae_tiling",
    "attention",
    "width",
    "height",
    "steps",
    "batch",
    "guidance",
    "fits",
    "fp8_layer_paths",
    "stages",
    "reasons",
    "candidates",
)


def add_plan_command(subparsers) -> None:
    """`plan`: the plan for a budget, card or preset, or (--table) the planner table as markdown."""
    p = subparsers.add_parser("plan", help="choose a placement and predict its latency for a card or VRAM budget (no GPU needed)")
    p.add_argument("--preset", default=None, help="take model, precision, T5, size, steps and guidance from a preset (e.g. kiosk-8gb)")
    p.add_argument(
        "--card", default=None,
        help="predict for a named card (" + ", ".join(CARDS) + "); its VRAM is the budget unless --vram says otherwise (default: this GPU as the start-up probe measures it, cached per device; without a GPU the " + DEFAULT_CARD + ")",
    )  # fmt: skip
    p.add_argument("--model", default=None, help="a known family: " + ", ".join(SPECS) + " (default sd3.5-large-turbo)")
    p.add_argument("--vram", default=None, help="VRAM budget, e.g. 8GiB, 8GB, 8G, 8192MiB (default: the card's, else the GPU's free memory)")
    p.add_argument("--ram", default=None, help="host RAM budget (default: available RAM)")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="transformer precision (default fp8)")
    p.add_argument("--t5", default=None, choices=("auto", *T5_PLACEMENTS), help="hold T5 to one mode (default: the planner chooses)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's or the model's)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's; 1 or less runs one transformer pass per image instead of two")
    p.add_argument(
        "--compiled", action="store_true",
        help="predict for an engine that compiles (a preset's compile = true does the same): compiled blocks with the fused FP8 quantizer where the plan keeps the transformer resident, eager otherwise (default: eager)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--table", nargs="?", const="-", default=None, metavar="FILE", help="write the planner table (markdown) to FILE, or print it")
    p.set_defaults(func=cmd_plan)


def _settings(args) -> dict:
    """Model, precision, T5 and request fields: the command line over the preset over the model's."""
    out = {"model": "sd3.5-large-turbo", "precision": "fp8", "t5": "auto", "vram": None, "compile": False}
    if args.preset:
        from .presets import load_preset

        preset = load_preset(args.preset)
        out.update(model=preset.model, precision=preset.precision, t5=preset.t5, vram=preset.vram, compile=preset.compile)
        out.update({k: getattr(preset, k) for k in ("steps", "guidance", "width", "height") if getattr(preset, k) is not None})
    for key in ("model", "precision", "t5", "vram", "steps", "guidance", "width", "height"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    return out


def cmd_plan(args) -> int:
    import json

    from .requests import GenerationRequest, RequestError
    from .specs import find_spec

    if args.table is not None:
        text = table_markdown(planner_table("fp8"), f"python -m fp8pipe plan --table {args.table}".replace(" --table -", " --table"))
        if args.table == "-":
            print(text, end="")
        else:
            from pathlib import Path

            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(text)
            print(f"wrote {args.table}")
        return 0
    settings = _settings(args)
    spec = find_spec(settings["model"])
    if spec is None:
        raise RequestError("model", f"must be one of {', '.join(SPECS)} (or an alias); got {settings['model']!r}")
    try:
        card = find_card(args.card) if args.card else probed_card()  # no --card: this GPU as probed (None without one)
    except ValueError as e:
        raise RequestError("card", str(e).removeprefix("card ")) from None
    request = GenerationRequest.create(
        spec, prompt="plan", guidance=settings.get("guidance"), seed=0, width=settings.get("width"), height=settings.get("height"), batch=args.batch, steps=settings.get("steps")
    )
    vram_text = args.vram or (None if card else settings["vram"])
    vram = parse_size(vram_text) if vram_text else int(card.vram_gib * GiB) if args.card else free_vram_bytes()
    if vram is None:
        raise RequestError("vram", "no GPU here to measure: pass a budget such as --vram 8GiB, or --card NAME")
    host = parse_size(args.ram) if args.ram else host_ram_bytes()
    work = Workload(request.width, request.height, request.batch, request.guidance > 1.0, request.steps)  # the pipeline guides above 1
    plan = plan_as_run(spec, vram, host, work, settings["precision"], choose_attention("cuda", 16), settings["t5"], card, args.compiled or settings["compile"])
    execution = plan.execution
    if args.json:
        d = plan.as_dict()
        print(json.dumps({k: d[k] for k in PLAN_KEYS}))
        return 0 if plan.fits else 1
    print(f"{spec.name} ({settings['precision']}, {execution}) at {request.width}x{request.height}, {request.steps} steps, batch {request.batch}, guidance {'on' if work.guidance else 'off'}")
    print(f"budget: {format_size(vram)} VRAM, {format_size(host)} host RAM; latency predicted for {plan.card}" + ("" if card else " (no --card: the default)"))
    blocks = f" ({plan.resident_blocks} of {spec.transformer_config['num_layers']} blocks resident)" if plan.placement == "partial" else ""
    print(f"plan: {plan.placement}{blocks}; T5 {plan.t5}; VAE tiling {'on' if plan.vae_tiling else 'off'}; attention {plan.attention}")
    print(f"predicted latency: {plan.predicted_latency_s:.2f} s (a prediction; floor {plan.floor_latency_s:.2f} s at 100 % of the card's peaks)")
    print(f"predicted peak: {format_size(plan.predicted_peak_vram_bytes)} VRAM, {format_size(plan.predicted_peak_host_bytes)} host RAM" + ("" if plan.fits else "  (DOES NOT FIT)"))
    print("why:")
    for line in plan.reasons:
        print(f"  - {line}")
    b = plan.breakdown
    print(
        "terms: weights on GPU when resident {}, denoise activations {}, VAE decode {}, CUDA runtime {}".format(
            format_size(b["weights_on_gpu"]), format_size(b["denoise_activations"]), format_size(b["vae_decode"]), format_size(b["cuda_runtime"])
        )
    )
    return 0 if plan.fits else 1


__all__ = ["DEFAULT_CARD", "add_plan_command", "cmd_plan"]
