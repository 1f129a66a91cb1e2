"""The check's orchestration: one child process per stage under a time limit, and the report
files (JSON + markdown per stage, and a summary) with the machine's facts and the command."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

STAGES = ("tests", "probe", "bench", "kiosk", "planner", "soak")
GPU_STAGES = frozenset(STAGES) - {"tests"}
STAGE_LIMIT_S = 540  # each stage stays under 9 minutes on an H100 (a device call is limited to 10)
# How a whole-check budget (--total-s) is shared, in seconds of a 540 s budget: the tests as
# measured on an H100 (2.5 min) with room, the probe's 10 s, and the rest split so that one device
# call of ~9 minutes runs every stage (bench, kiosk, planner and soak stop starting new cases at
# their deadline and report what they did).
STAGE_WEIGHTS = {"tests": 165, "probe": 20, "bench": 145, "kiosk": 70, "planner": 70, "soak": 70}
MIN_STAGE_S = 30  # a stage gets at least this long, or it is not started
DEFAULT_OUT = "bench/results/gpu-check"


def environment() -> dict:
    """Device, driver and library versions: the header of every stage report."""
    import platform

    import torch

    env = {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("diffusers", "transformers", "accelerate", "xformers"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "unknown")
        except Exception as e:  # xformers is optional; a broken build is a fact to report
            env[name] = None if isinstance(e, ImportError) else f"broken: {type(e).__name__}"
    if torch.cuda.is_available():
        from ..bench.measure import _nvidia_driver

        props = torch.cuda.get_device_properties(0)
        env.update(
            device=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            vram_bytes=props.total_memory,
            multiprocessors=props.multi_processor_count,
            driver=_nvidia_driver(),
        )
    else:
        env.update(device="cpu (no CUDA device)", driver=None)
    return env


def no_gpu_reason() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    return "needs a CUDA GPU: torch.cuda.is_available() is False here" + ("" if torch.version.cuda else " (this torch is a CPU build)")


def write_report(out: Path, stage: str, report: dict) -> None:
    """`<out>/<stage>.json` and `<out>/<stage>.md` (header, summary lines, then the stage's table)."""
    out.mkdir(parents=True, exist_ok=True)
    log = report.pop("log", None)
    if log:
        (out / f"{stage}.log").write_text(log)
    (out / f"{stage}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    env = report.get("environment", {})
    lines = [
        f"# fp8pipe check: {stage}",
        "",
        f"- status: **{report['status']}** in {report.get('seconds', 0):.1f} s",
        f"- command: `{report.get('command', '')}`",
        f"- device: {env.get('device')} (compute capability {env.get('compute_capability', 'n/a')}), driver {env.get('driver') or 'n/a'}, CUDA {env.get('cuda_runtime') or 'n/a'}",
        f"- torch {env.get('torch')}, diffusers {env.get('diffusers')}, transformers {env.get('transformers')}, xformers {env.get('xformers') or 'not installed'}, Python {env.get('python')}",
        f"- date: {env.get('created_utc')}",
        "",
    ]
    lines += [f"{line}" for line in report.get("summary", [])]
    if report.get("markdown"):
        lines += ["", report["markdown"]]
    if report.get("error"):
        lines += ["", "```", report["error"], "```"]
    (out / f"{stage}.md").write_text("\n".join(lines).rstrip() + "\n")


def run_stage_here(stage: str, options: dict) -> dict:
    """Run one stage in this process and return its report (status, summary lines, data)."""
    from . import stages

    start = time.perf_counter()
    report = {"stage": stage, "environment": environment(), "command": options.get("command", "")}
    reason = no_gpu_reason() if stage in GPU_STAGES and not options.get("allow_cpu") else None
    if reason:
        report.update(status="skipped", summary=[f"skipped: {reason}"], data={})
    else:
        try:
            report.update(getattr(stages, f"stage_{stage}")(options))
        except Exception as e:  # one broken stage must not hide the others' results
            import traceback

            report.update(status="failed", summary=[f"failed: {type(e).__name__}: {str(e)[:300]}"], error=traceback.format_exc()[-4000:], data={})
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def stage_limit(stage: str, remaining: list[str], left_s: float | None, limit_s: float) -> float:
    """The wall-clock limit of `stage`: `limit_s`, or under a whole-check budget its weighted share
    of the time `left_s` for the stages `remaining` (itself first), never more than `limit_s`.
    Time a stage leaves unused passes to the stages after it; each gets at least MIN_STAGE_S while
    that much is left."""
    if left_s is None:
        return limit_s
    weights = sum(STAGE_WEIGHTS[s] for s in remaining)
    share = max(left_s * STAGE_WEIGHTS[stage] / weights, MIN_STAGE_S)  # a short stage still gets a usable slot
    return min(limit_s, share, left_s)


def run_check(stages: list[str], out: Path, options: dict, limit_s: float = STAGE_LIMIT_S, log=print, total_s: float | None = None) -> dict:
    """Run each stage in a child process under its limit (`limit_s`, or its share of `total_s`
    for the whole check); returns the summary (also written)."""
    results = []
    began = time.perf_counter()
    for index, stage in enumerate(stages):
        left = None if total_s is None else total_s - (time.perf_counter() - began)
        stage_s = stage_limit(stage, stages[index:], left, limit_s)
        if stage_s < MIN_STAGE_S:
            report = {"stage": stage, "status": "not run", "environment": environment(), "command": options.get("command", ""),
                      "summary": [f"not run: {max(left or 0, 0):.0f} s of the --total-s budget was left for {len(stages) - index} stage(s)"], "seconds": 0.0}  # fmt: skip
            write_report(out, stage, report)
            results.append({"stage": stage, "status": report["status"], "seconds": 0.0, "summary": report["summary"]})
            log(f"[check] {stage}: not run (budget spent)")
            continue
        options = {**options, "budget_s": stage_s - min(30.0, 0.15 * stage_s)}  # a stage stops starting new work this long before its limit
        log(f"[check] {stage} ... (limit {stage_s:.0f} s)")
        start = time.perf_counter()
        (out / f"{stage}.json").unlink(missing_ok=True)  # a report left by an earlier run must not pass for this one's
        child = [sys.executable, "-m", "fp8pipe", "check", "--stages", stage, "--out", str(out), "--in-process", "--options", json.dumps(options)]
        try:
            done = subprocess.run(child, timeout=stage_s, capture_output=True, text=True)
            report = json.loads((out / f"{stage}.json").read_text()) if (out / f"{stage}.json").is_file() else None
            if report is None:
                report = {"stage": stage, "status": "failed", "environment": environment(), "command": options.get("command", ""),
                          "summary": [f"failed: the stage process exited with status {done.returncode} and wrote no report"],
                          "error": (done.stdout + done.stderr)[-4000:], "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
                write_report(out, stage, report)
        except subprocess.TimeoutExpired as e:
            tail = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))[-2000:]
            report = {"stage": stage, "status": "timeout", "environment": environment(), "command": options.get("command", ""),
                      "summary": [f"timeout: the stage ran past its {stage_s:.0f} s limit and was stopped"], "error": tail,
                      "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
            write_report(out, stage, report)
        results.append({"stage": stage, "status": report["status"], "seconds": report["seconds"], "summary": report.get("summary", [])})
        log(f"[check] {stage}: {report['status']} in {report['seconds']:.0f} s")
        for line in report.get("summary", [])[:12]:
            log(f"    {line}")
    summary = {"stage": "summary", "environment": environment(), "command": options.get("command", ""), "stages": results}
    summary["status"] = "ok" if all(r["status"] in ("ok", "skipped") for r in results) else "failed"
    summary["seconds"] = round(sum(r["seconds"] for r in results), 2)
    summary["summary"] = [f"- {r['stage']}: {r['status']} ({r['seconds']:.0f} s)" + (f": {r['summary'][0]}" if r["summary"] else "") for r in results]
    write_report(out, "summary", summary)
    return summary


# ---- command line ----------------------------------------------------------------------------


def _stage_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ValueError(f"--stages takes a comma list of {', '.join(STAGES)}; got {text!r}")
    return names


def add_check_command(subparsers) -> None:
    c = subparsers.add_parser(
        "check",
        help="prove fp8pipe on this GPU: CUDA tests, bench, kiosk latency, planner, soak (each stage < 9 min on an H100)",
        description="Runs each stage in its own process and writes <out>/<stage>.json and .md. Without CUDA the GPU stages are skipped with the reason.",
    )
    c.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)} (default: all)")
    c.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the reports (default {DEFAULT_OUT})")
    c.add_argument("--vram-cap", default="8GiB", help="VRAM cap for the capped bench rows, the kiosk, and the soak: an 8 GB card (default 8GiB)")
    c.add_argument("--archs", default="medium,large,large-turbo", help="bench architectures (default medium,large,large-turbo)")
    c.add_argument("--resolution", type=int, default=1024, help="bench resolution in px (default 1024)")
    c.add_argument("--kiosk-preset", default="kiosk-8gb", help="the preset the kiosk stage serves (default kiosk-8gb; kiosk-medium-8gb is the compiled Medium Turbo kiosk)")
    c.add_argument("--soak-requests", type=int, default=200, help="requests in the soak (default 200)")
    c.add_argument("--limit-s", type=float, default=STAGE_LIMIT_S, help=f"wall-clock limit per stage in seconds (default {STAGE_LIMIT_S})")
    c.add_argument("--total-s", type=float, default=None, help="wall-clock budget for the whole check, shared among the stages by their usual length (e.g. 540 for one 10-minute device call; default: none, each stage gets --limit-s)")
    c.add_argument("--quick", action="store_true", help="fewer cases and requests: a smoke run of every stage")
    c.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--options", default=None, help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_check)


def command_line(args) -> str:
    parts = ["python -m fp8pipe check", f"--stages {args.stages}", f"--out {shlex.quote(args.out)}", f"--vram-cap {args.vram_cap}"]
    parts += [f"--archs {args.archs}", f"--resolution {args.resolution}", f"--kiosk-preset {args.kiosk_preset}", f"--soak-requests {args.soak_requests}", f"--limit-s {args.limit_s:g}"]
    parts += [f"--total-s {args.total_s:g}"] if args.total_s is not None else []
    return " ".join(parts + (["--quick"] if args.quick else []))


def cmd_check(args) -> int:
    from ..memory import parse_size

    stages = _stage_list(args.stages)
    out = Path(args.out)
    if args.in_process:
        options = json.loads(args.options) if args.options else {}
        for stage in stages:
            write_report(out, stage, run_stage_here(stage, options))
        return 0
    if args.soak_requests < 1:
        raise ValueError(f"--soak-requests must be at least 1; got {args.soak_requests}")
    if not 30 <= args.limit_s <= 3600:
        raise ValueError(f"--limit-s must be 30 to 3600 seconds; got {args.limit_s:g}")
    if args.total_s is not None and not 60 <= args.total_s <= 21600:
        raise ValueError(f"--total-s must be 60 to 21600 seconds; got {args.total_s:g}")
    options = {
        "command": command_line(args),
        "vram_cap": parse_size(args.vram_cap),
        "archs": [a.strip() for a in args.archs.split(",") if a.strip()],
        "resolution": args.resolution,
        "soak_requests": args.soak_requests,
        "kiosk_preset": args.kiosk_preset,
        "quick": args.quick,
        "budget_s": args.limit_s - 30,  # a stage stops starting new work this long before its limit
    }
    summary = run_check(stages, out, options, args.limit_s, log=lambda m: print(m, flush=True), total_s=args.total_s)
    print(f"reports in {out}/ (summary.md)")
    return 0 if summary["status"] == "ok" else 1
