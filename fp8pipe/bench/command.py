"""`python -m fp8pipe bench`: the command line around the rows and the reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..memory import parse_size  # one reading of sizes project-wide: binary units, 8GB == 8GiB
from .report import BENCH_PRECISIONS, markdown_report, plot_report, projection_markdown, projection_report
from .rows import BenchOptions, make_cases, run_bench
from .weights import ARCHS, resolve_arch

PLACEMENTS = ("resident", "model_offload", "planned", "served")  # planned: what the planner picks for --vram-limit; served: the app's request path (fp8pipe.serving)
COMPILE_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BENCH_T5 = ("16bit", "fp8", "drop")


def _csv(kind):
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def add_bench_command(subparsers) -> None:
    from ..projection import CARDS

    b = subparsers.add_parser("bench", help="BF16 against FP8 on full-size SD3.5 (random weights) in one run, or --project")
    b.add_argument("--arch", type=_csv(str), default=["tiny"], help=f"comma list of {', '.join(ARCHS)} (default tiny, which runs on the CPU)")
    b.add_argument("--precision", type=_csv(str), default=list(BENCH_PRECISIONS), help="comma list of bf16, fp8 (default both)")
    b.add_argument("--resolution", type=_csv(int), default=None, help="comma list of square sizes in px (default: the model's)")
    b.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    b.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's; <= 1 runs one pass per step)")
    b.add_argument("--placement", type=_csv(str), default=["resident"], help=f"comma list of {', '.join(PLACEMENTS)}")
    b.add_argument("--compile", nargs="?", const="on", default="off", choices=list(COMPILE_CHOICES), help="torch.compile the transformer: off (default), on, both")
    b.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="reduce-overhead adds CUDA graphs on a GPU")
    b.add_argument("--fuse-quant", action="store_true", help="FP8: one compiled kernel for the activation quantization")
    b.add_argument("--t5", default="16bit", choices=BENCH_T5)
    b.add_argument("--fp8-path", default="auto", choices=("auto", "scaled_mm", "upcast"))
    b.add_argument("--device", default="auto")
    b.add_argument("--vram-limit", default=None, help="cap GPU memory, e.g. 8GiB (torch.cuda.set_per_process_memory_fraction)")
    b.add_argument("--repeats", type=int, default=3, help="counted images per case (default 3)")
    b.add_argument("--warmup", type=int, default=1, help="uncounted images per case, at least (default 1)")
    b.add_argument("--min-warmup-s", type=float, default=10.0, help="keep warming up until this many seconds have passed (default 10)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cpu-full-size", action="store_true", help="allow full-size models on the CPU (slow, and needs the RAM)")
    b.add_argument("--no-fidelity", action="store_true", help="skip the FP8-vs-BF16 relative L2")
    b.add_argument("--json", default=None, help="write the report as JSON here")
    b.add_argument("--markdown", default=None, help="write the report as a markdown table here")
    b.add_argument("--plot", default=None, help="write a PNG plot here")
    b.add_argument("--project", action="store_true", help="no measurement: projected floors on named cards (a projection)")
    b.add_argument("--cards", type=_csv(str), default=list(CARDS), help=f"for --project: comma list of {', '.join(CARDS)}")
    b.set_defaults(func=cmd_bench)


def command_line(args) -> str:
    """The exact command that reproduces this run, written from the parsed options."""
    import shlex

    parts = ["python -m fp8pipe bench", f"--arch {','.join(args.arch)}", f"--precision {','.join(args.precision)}"]
    if args.resolution:
        parts.append(f"--resolution {','.join(map(str, args.resolution))}")
    for flag, value in (("--steps", args.steps), ("--guidance", args.guidance), ("--vram-limit", None if args.project else args.vram_limit)):
        if value is not None:
            parts.append(f"{flag} {value}")
    parts.append(f"--t5 {args.t5}")
    if args.project:
        parts += ["--project", f"--cards {shlex.quote(','.join(args.cards))}"]
    else:
        parts += [f"--placement {','.join(args.placement)}", f"--compile {args.compile}", f"--compile-mode {args.compile_mode}"]
        parts += [f"--fp8-path {args.fp8_path}", f"--device {args.device}", f"--repeats {args.repeats}", f"--warmup {args.warmup}", f"--min-warmup-s {args.min_warmup_s:g}", f"--seed {args.seed}"]
        parts += [flag for flag, on in (("--fuse-quant", args.fuse_quant), ("--no-fidelity", args.no_fidelity), ("--cpu-full-size", args.cpu_full_size)) if on]
    for flag in ("json", "markdown", "plot"):
        if getattr(args, flag):
            parts.append(f"--{flag} {shlex.quote(getattr(args, flag))}")
    return " ".join(parts)


def cmd_bench(args) -> int:
    for p in args.precision:
        if p not in BENCH_PRECISIONS:
            raise ValueError(f"--precision takes {', '.join(BENCH_PRECISIONS)}; got {p!r}")
    for p in args.placement:
        if p not in PLACEMENTS:
            raise ValueError(f"--placement takes {', '.join(PLACEMENTS)}; got {p!r}")
    if args.repeats < 1 or args.warmup < 0 or args.min_warmup_s < 0:
        raise ValueError("--repeats must be >= 1, --warmup and --min-warmup-s >= 0")
    specs = [resolve_arch(a) for a in args.arch]
    if args.project:
        from ..projection import CARDS

        unknown = [c for c in args.cards if c not in CARDS]
        if unknown:
            raise ValueError(f"unknown card(s) {', '.join(unknown)}; known: {', '.join(CARDS)}")
        report = {"command": command_line(args), **projection_report(specs, args.precision, args.resolution, args.steps, args.guidance, args.t5, args.cards)}
        text = projection_markdown(report)
    else:
        vram_limit = parse_size(args.vram_limit) if args.vram_limit else None
        cases = make_cases(args.arch, args.precision, args.resolution, args.steps, args.guidance, args.placement, COMPILE_CHOICES[args.compile])
        options = BenchOptions(
            device=args.device,
            t5=args.t5,
            fp8_path=args.fp8_path,
            compile_mode=args.compile_mode,
            fuse_quant=args.fuse_quant,
            repeats=args.repeats,
            warmup=args.warmup,
            min_warmup_s=args.min_warmup_s,
            cpu_full_size=args.cpu_full_size,
            seed=args.seed,
        )
        report = run_bench(cases, options, vram_limit, not args.no_fidelity, command_line(args), log=lambda m: print(m, file=sys.stderr))
        text = markdown_report(report)
        if args.plot:
            plot_report(report, Path(args.plot))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    print(text)
    return 0
