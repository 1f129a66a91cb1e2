"""Mutation testing of the core modules with mutmut: plant one-line bugs, run the covering tests.

    pip install mutmut==3.8.1            # not a runtime or test dependency
    python scripts/mutation.py           # all core modules; writes bench/results/mutation.json and .md
    python scripts/mutation.py --module fp8 --module safety --out /tmp/m.json

mutmut's shared settings live in pyproject.toml under [tool.mutmut]; SCOPE below gives each
module its functions and the test files that cover it, and each module runs in its own copy
of the tree under mutants/ (git-ignored). A mutant that no test can
tell apart from the original is listed in scripts/mutation_equivalent.toml with the reason,
and left out of the score. Run from the repository root; torch runs one thread per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "scripts" / "mutation_equivalent.toml"

ENGINE = "fp8pipe.engine.xǁ{}ǁ{}__mutmut_*"
PLANNER = (
    "_t5_gpu_bytes", "_t5_host_bytes", "predict", "latency_job", "_rungs", "plan_ladder", "fp8_layer_paths", "choose",
    "candidates_summary", "plan_placement", "_why", "_name", "next_plan",
)  # the pure planner; free_vram_bytes/host_ram_bytes ask the machine, the docs table is generated text
SIZES = (
    "parse_size", "format_size", "image_tokens", "text_tokens", "denoise_activation_bytes", "vae_decode_bytes",
    "text_encode_bytes",
)
# The latency/planner tests that build or run real torch modules (FLOP counters, hooks on a tiny
# pipeline): they pin placement and the FLOP count, not the planner's arithmetic, and cost seconds each.
PURE_PLANNER_TESTS = [
    "tests/test_memory.py",
    "tests/test_planner_peak_accounting.py",
    "tests/test_planner_explains_and_steps_down.py",
    "tests/test_latency_roofline_terms.py",
    "tests/test_working_set_sizes.py",
    *(
        f"tests/test_latency.py::{t}"
        for t in (
            "test_a_slow_bus_keeps_more_blocks_resident",
            "test_the_chosen_plan_is_the_fastest_that_fits_by_brute_force",
            "test_a_budget_too_small_names_the_shortfall",
            "test_no_prediction_is_below_its_floor_and_every_one_is_labelled",
            "test_a_larger_budget_never_predicts_a_slower_plan",
            "test_plan_reports_the_fp8_paths_per_layer_kind",
            "test_attention_runs_at_the_16bit_rate_even_on_the_fp8_path",
            "test_predictions_land_within_the_band_of_every_h100_measurement",
            "test_the_kiosk_preset_serves_the_size_the_latency_model_chooses",
            "test_plan_command_prints_the_contract_for_a_preset_and_for_explicit_settings",
            "test_plan_command_names_an_unknown_card",
        )
    ),
]
# Every module's workers fork from mutmut's main process, which has run each covering test once
# (the stats run): imports, diffusers' lazily imported modules, the tiny pipeline on disk and the
# planner's caches are warm, so a mutant pays for its tests only. (pyproject's forkserver re-imports
# them per mutant: checkpoint took 15 min that way, 3 min forked.) torch runs one OpenMP thread
# and tokenizers none (TOKENIZERS_PARALLELISM=false), so forking is safe. A mutant that loops
# (a parser's position never advancing) is stopped after 2 x 3 x (estimate + 5 s) of CPU time.
FORK = {"process_isolation": "fork", "timeout_constant": 5.0}
# module -> (mutmut name globs: x_<function>, xǁ<Class>ǁ<method>; the tests that cover it; extra
# [tool.mutmut] settings). Each module runs on its own with only its covering tests.
SCOPE = {
    "fp8": (["fp8pipe.fp8.*"], ["tests/test_fp8_numerics.py", "tests/test_fp8.py", "tests/test_fp8_path_counts.py", "tests/test_fp8_device_capability.py"], FORK),
    "checkpoint": (["fp8pipe.checkpoint.*"], ["tests/test_checkpoint_files.py", "tests/test_checkpoint.py", "tests/test_comfy_layouts.py"], FORK),
    "loader: manifest use": (
        ["fp8pipe.loader.x__manifest_settings__mutmut_*"],
        [
            "tests/test_checkpoint.py::test_the_manifest_gives_the_policy_spec_and_kind_of_a_checkpoint_folder",
            "tests/test_checkpoint.py::test_a_checkpoint_saved_with_a_non_default_policy_loads_with_that_policy",
        ],
        FORK,
    ),
    "requests": (["fp8pipe.requests.*"], ["tests/test_requests.py", "tests/test_request_limits.py", "tests/test_request_text_refusals.py", "tests/test_request_loras.py"], FORK),
    "safety": (["fp8pipe.safety.*"], ["tests/test_safety.py", "tests/test_safety_hits.py", "tests/test_filter_word_forms.py"], FORK),
    "metadata": (["fp8pipe.metadata.*"], ["tests/test_metadata.py", "tests/test_metadata_parsing.py", "tests/test_png_parameters_edges.py", "tests/test_lora_cli.py::test_lora_tags_round_trip_through_the_parameters_text", "tests/test_lora_cli.py::test_a_malformed_lora_tag_stays_part_of_the_prompt"], FORK),
    "planner": ([f"fp8pipe.planner.x_{f}__mutmut_*" for f in PLANNER], PURE_PLANNER_TESTS, FORK),
    "planner: sizes": ([f"fp8pipe.sizes.x_{f}__mutmut_*" for f in SIZES], PURE_PLANNER_TESTS, FORK),
    "latency model": (["fp8pipe.latency.*"], PURE_PLANNER_TESTS, FORK),
    "flops: work count": (["fp8pipe.flops.*"], ["tests/test_bench.py"], FORK),
    "engine: queue, cancel, pool": (
        [
            *(ENGINE.format("Job", m) for m in ("cancel", "cancelled", "result", "done")),
            *(ENGINE.format("Engine", m) for m in ("submit", "prepare", "run_job", "_work", "_execute", "close", "_entry_for_job", "_entry", "_make_room", "_evict")),
        ],
        # Stand-ins for the loader and the pipeline (no model runs, so workers may fork); the
        # demo-model tests of tests/test_engine.py cost ~20 s of loading per mutant and are left out.
        ["tests/test_engine_queue_cancel_pool.py", "tests/test_engine_pool_entries.py"],
        FORK,
    ),
}
# bench/: the committed GPU rows some tests read; docs/published_timings.toml: the published rows the latency check reads
OPTIONAL = ("flops: work count",)  # not a core module of issue 19: run with --module
COPIED = ("fp8pipe", "tests", "presets", "bench", "docs/published_timings.toml", "app.py", "pyproject.toml")
KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -9: "killed by signal", -11: "crash"}
SURVIVED = {0: "survived", 33: "no covering test", 5: "no covering test"}


def _workdir(module: str) -> Path:
    return ROOT / "mutants" / re.sub(r"[^a-z0-9]+", "-", module.lower()).strip("-")


def _in_scope(module: str, name: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, g) for g in SCOPE[module][0])


def _results(module: str) -> dict[str, int | None]:
    codes = {}
    for meta in sorted((_workdir(module) / "mutants" / "fp8pipe").glob("*.py.meta")):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return {n: c for n, c in codes.items() if _in_scope(module, n)}


def _prepare(module: str) -> Path:
    """A copy of the tree whose [tool.mutmut] mutates only this module's file, with its tests."""
    work = _workdir(module)
    shutil.rmtree(work, ignore_errors=True)  # a clean measure: no cached results
    work.mkdir(parents=True)
    for name in COPIED:
        src = ROOT / name
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, work / name, ignore=ignore) if src.is_dir() else shutil.copy2(src, work / name)
    source = _source(module)
    # [tool.mutmut] is the file's last table: this module's settings replace or follow its lines.
    settings = {"only_mutate": [source], "pytest_add_cli_args_test_selection": SCOPE[module][1], **SCOPE[module][2]}
    text = (work / "pyproject.toml").read_text()
    for key, value in settings.items():
        line = f"{key} = {json.dumps(value)}"
        text, n = re.subn(rf"^{key} = .*$", lambda _m: line, text, flags=re.MULTILINE)
        text += "" if n else line + "\n"
    (work / "pyproject.toml").write_text(text)
    return work


def _source(module: str) -> str:
    return "/".join(SCOPE[module][0][0].split(".")[:2]) + ".py"  # fp8pipe.fp8.x_f* -> fp8pipe/fp8.py


# mutmut is this script's tool, not a dependency of fp8pipe (requirements.txt does not carry it):
# like `mutmut run`, its diff reader runs in a process of its own, one per module for all names.
_DIFFS = """
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
source, names = sys.argv[1], json.load(sys.stdin)
json.dump({n: get_diff_for_mutant(n, path=Path(source)) for n in names}, sys.stdout)
"""


SHOWN = 240  # characters of a diff the markdown shows; the JSON and the equivalents file keep it whole


def _diffs(names: list[str], module: str) -> dict[str, str]:
    """Each mutant's changed line, before -> after, whole (it identifies the change: two mutants
    of one long line differ past any cut), from mutmut's own diff (a `mutmut show` per mutant
    would cost a second of start-up each)."""
    if not names:
        return {}
    run = subprocess.run([sys.executable, "-c", _DIFFS, _source(module)], cwd=_workdir(module), input=json.dumps(names),
                         capture_output=True, text=True, check=True)
    out = {}
    for name, diff in json.loads(run.stdout).items():
        lines = [ln[1:].strip() for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        out[name] = " → ".join(lines[:2])
    return out


def _versions() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), **{p: version(p) for p in ("mutmut", "torch", "pytest")}}


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end"


def measure(module: str, command: str) -> dict:
    """One module's result from its mutants/ folder: counts, score, the survivors and the equivalents.

    An equivalent mutant is listed with the change it was judged on: mutmut numbers mutants by
    position in their function, so after an edit the same name can be another change. A listed
    name whose change differs now counts as a survivor ("re-check") until someone judges it again."""
    listed = tomllib.loads(EQUIVALENT_FILE.read_text()) if EQUIVALENT_FILE.is_file() else {}
    codes = _results(module)
    names = sorted(codes)
    killed = [n for n in names if codes[n] in KILLED]
    diffs = _diffs([n for n in names if n not in killed], module)
    equiv = [n for n in diffs if n in listed and listed[n]["diff"] == diffs[n]]
    alive = [n for n in diffs if n not in equiv]
    counted = len(names) - len(equiv)

    def status(n: str) -> str:
        if n in listed:
            return f"re-check: listed as equivalent for `{listed[n]['diff'][:SHOWN]}`"
        return SURVIVED.get(codes[n], f"exit {codes[n]}")

    return {
        "mutants": len(names),
        "killed": len(killed),
        "timed_out": sum(1 for n in killed if KILLED[codes[n]] == "timeout"),
        "survived": len(alive),
        "equivalent": len(equiv),
        "score_percent": round(100.0 * len(killed) / counted, 1) if counted else 100.0,
        "command": command,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "versions": _versions(),
        "scope": SCOPE[module][0],
        "tests": SCOPE[module][1],
        "surviving": [{"name": n, "status": status(n), "diff": diffs[n]} for n in alive],
        "equivalent_mutants": [{"name": n, "diff": diffs[n], "reason": listed[n]["reason"]} for n in equiv],
    }


def markdown(results: dict) -> str:
    rows, survivors, excluded = [], [], []
    for module, r in results.items():
        rows.append(
            f"| {module} | {r['mutants']} | {r['killed']} | {r['timed_out']} | {r['survived']} | {r['equivalent']} | **{r['score_percent']:.1f} %** | {r['minutes']} | {r['measured']} |"
        )
        survivors += [f"- {module}: `{m['name']}` ({m['status']}): `{m['diff'][:SHOWN]}`" for m in r["surviving"]]
        excluded += [f"- {module}: `{m['name']}`: `{m['diff'][:SHOWN]}`: {m['reason']}" for m in r["equivalent_mutants"]]
    scopes = []
    for module, r in results.items():
        names = sorted({re.sub(r"__mutmut_\*$", "", g).split(".", 2)[-1].removeprefix("x_").replace("xǁ", "").replace("ǁ", ".") for g in r["scope"]})
        what = "every function" if names == ["*"] else ", ".join(f"`{n}`" for n in names)
        scopes.append(f"- {module}: mutated {what}; tests: {', '.join(f'`{t}`' for t in r['tests'])}")
    any_r = next(iter(results.values()), {})
    versions = ", ".join(f"{k} {v}" for k, v in any_r.get("versions", {}).items())
    return "\n".join(
        [
            "# Mutation score of the core modules",
            "",
            "Measured with `python scripts/mutation.py` (mutmut, one module at a time, each module's covering tests only;",
            f"the command of each row is in `mutation.json`) on {any_r.get('machine', 'an unrecorded machine')}; {versions}.",
            f"Minutes are wall-clock; all modules together: **{sum(r['minutes'] for r in results.values()):.1f} minutes**.",
            "Score = killed / (mutants - equivalent); a timeout counts as killed, a mutant no test reaches as survived.",
            "The scope of each module (the functions mutated and the tests run) is in `mutation.json` and `scripts/mutation.py`.",
            "",
            "| module | mutants | killed | of which timed out | survived | equivalent | score | minutes | measured |",
            "|:--|--:|--:|--:|--:|--:|--:|--:|:--|",
            *rows,
            "",
            "## Scope of each module (functions mutated; the tests run against them)",
            "",
            *scopes,
            "",
            *(["## Notes", "", *(f"- {m}: {r['note']}" for m, r in results.items() if r.get("note")), ""] if any(r.get("note") for r in results.values()) else []),
            "## Surviving mutants",
            "",
            *(survivors or ["None."]),
            "",
            "## Equivalent mutants (left out of the score, reasons from scripts/mutation_equivalent.toml)",
            "",
            *(excluded or ["None."]),
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=list(SCOPE), help="only these modules (repeatable)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default="bench/results/mutation.json", help="results by module (merged with the file's others); a markdown twin beside it")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the last run's mutants/")
    args = parser.parse_args(argv)
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    modules = args.module or [m for m in SCOPE if m not in OPTIONAL]
    out = Path(args.out)
    results = json.loads(out.read_text())["modules"] if out.is_file() else {}
    # FP8PIPE_TEST_CACHE: the tests' tiny pipeline is built once and read by every mutant's run (tests/conftest.py)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "FP8PIPE_TEST_CACHE": str(ROOT / "mutants" / "test-cache"), "TOKENIZERS_PARALLELISM": "false"}
    for module in modules:
        command = f"python scripts/mutation.py --module '{module}'"
        start = time.perf_counter()
        if not args.report_only:
            print(f"== {module}", flush=True)
            work = _prepare(module)
            run = subprocess.run([mutmut, "run", "--max-children", str(args.max_children), *SCOPE[module][0]], cwd=work, env=env, check=False)
            if run.returncode or not _results(module):
                print(f"mutmut run failed for {module} (exit {run.returncode}); see the output above", file=sys.stderr)
                return 1
        row = measure(module, command)
        # the module's whole share of the command: preparing, mutmut, and reading the results
        row["minutes"] = round((time.perf_counter() - start) / 60, 1) if not args.report_only else results.get(module, {}).get("minutes", 0.0)
        results = json.loads(out.read_text())["modules"] if out.is_file() else {}  # others' rows as they are now
        if args.report_only and module in results:  # the same run, re-read: keep when and where it was measured
            row["measured"] = results[module].get("measured", row["measured"])
            row["machine"] = results[module].get("machine", row["machine"])
        results[module] = row
        results = {m: results[m] for m in SCOPE if m in results}  # SCOPE's order
        out.write_text(json.dumps({"modules": results}, indent=1, ensure_ascii=False) + "\n")
        out.with_suffix(".md").write_text(markdown(results))
        r = results[module]
        print(f"{module}: {r['score_percent']} % ({r['killed']} killed, {r['survived']} survived, {r['equivalent']} equivalent) in {r['minutes']} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
