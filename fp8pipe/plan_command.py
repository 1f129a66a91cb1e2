"""`python -m fp8pipe plan`: the plan for a budget, card or preset, printed or as JSON."""

from __future__ import annotations

from .placement import choose_attention
from .planner import free_vram_bytes, host_ram_bytes, plan_placement, planner_table, table_markdown
from .sizes import PRECISIONS, T5_PLACEMENTS, Workload, format_size, parse_size
from .specs import SPECS

# ---- command line ------------------------------------------------------------------------


def add_plan_command(subparsers) -> None:
    """`plan`: print the placement for a budget, or (--table) the planner table as markdown."""
    p = subparsers.add_parser("plan", help="choose a memory placement for a VRAM budget (no GPU needed)")
    p.add_argument("--model", default="sd3.5-large-turbo", help="a known family: " + ", ".join(SPECS))
    p.add_argument("--vram", default=None, help="VRAM budget, e.g. 8GiB, 8GB, 8G, 8192MiB (default: free memory of the GPU)")
    p.add_argument("--ram", default=None, help="host RAM budget (default: available RAM)")
    p.add_argument("--precision", default="fp8", choices=PRECISIONS, help="transformer precision (default fp8)")
    p.add_argument("--t5", default="auto", choices=("auto", *T5_PLACEMENTS), help="hold T5 to one mode (default: the planner steps it down)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's; 1 or less runs one transformer pass per image instead of two")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--table", nargs="?", const="-", default=None, metavar="FILE", help="write the planner table (markdown) to FILE, or print it")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    import json

    from .requests import GenerationRequest, RequestError
    from .specs import find_spec

    if args.table is not None:
        text = table_markdown(planner_table(args.precision), f"python -m fp8pipe plan --table {args.table} --precision {args.precision}".replace(" --table -", " --table"))
        if args.table == "-":
            print(text, end="")
        else:
            from pathlib import Path

            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(text)
            print(f"wrote {args.table}")
        return 0
    spec = find_spec(args.model)
    if spec is None:
        raise RequestError("model", f"must be one of {', '.join(SPECS)} (or an alias); got {args.model!r}")
    request = GenerationRequest.create(spec, prompt="plan", guidance=args.guidance, seed=0, width=args.width, height=args.height, batch=args.batch)
    vram = parse_size(args.vram) if args.vram else free_vram_bytes()
    if vram is None:
        raise RequestError("vram", "no GPU here to measure: pass a budget such as --vram 8GiB")
    host = parse_size(args.ram) if args.ram else host_ram_bytes()
    work = Workload(request.width, request.height, request.batch, request.guidance > 1.0)  # the pipeline guides above 1
    plan = plan_placement(spec, vram, host, work, args.precision, choose_attention("cuda", 16), args.t5)
    if args.json:
        print(json.dumps(plan.as_dict()))
        return 0
    print(f"{spec.name} ({args.precision}) at {request.width}x{request.height}, batch {request.batch}, guidance {'on' if work.guidance else 'off'}")
    print(f"budget: {format_size(vram)} VRAM, {format_size(host)} host RAM")
    print(f"plan: {plan.placement}; T5 {plan.t5}; VAE tiling {'on' if plan.vae_tiling else 'off'}; attention {plan.attention}")
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
