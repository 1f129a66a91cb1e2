"""Benchmark harness: BF16 against FP8 on full-size SD3.5 with random weights, side by side in one run.

Split by job: `weights` (random full-size models), `measure` (timers, peaks, the VRAM cap,
the machine), `rows` (what one row does, and a run), `report` (markdown, plots, projection),
`command` (the `bench` command line). Rows carry the counted work (flops.py), and the FP8/BF16
ratios are taken between rows of the same run.
"""

from ..memory import parse_size
from .command import BENCH_T5, COMPILE_CHOICES, COMPILE_MODES, PLACEMENTS, add_bench_command, cmd_bench, command_line
from .measure import StepTimer, apply_vram_limit, compile_transformer_, environment, fuse_activation_quant_, host_peak_bytes, reset_host_peak
from .report import BENCH_PRECISIONS, markdown_report, plot_report, projection_markdown, projection_report
from .rows import PROMPT, RATIO_KEYS, BenchOptions, Case, add_ratios, fidelity, make_cases, run_bench, run_case, still_to_measure
from .weights import (
    ARCHS,
    GIB,
    materialize_random_,
    pipeline_weight_bytes,
    random_e4m3,
    random_pipeline,
    random_transformer,
    resolve_arch,
)

__all__ = [
    "ARCHS", "BENCH_PRECISIONS", "BENCH_T5", "COMPILE_CHOICES", "COMPILE_MODES", "GIB", "PLACEMENTS", "PROMPT", "RATIO_KEYS",
    "BenchOptions", "Case", "StepTimer", "add_bench_command", "add_ratios", "apply_vram_limit", "cmd_bench", "command_line",
    "compile_transformer_", "environment", "fidelity", "fuse_activation_quant_", "host_peak_bytes", "make_cases", "markdown_report",
    "materialize_random_", "parse_size", "pipeline_weight_bytes", "plot_report", "projection_markdown", "projection_report",
    "random_e4m3", "random_pipeline", "random_transformer", "reset_host_peak", "resolve_arch", "run_bench", "run_case", "still_to_measure",
]  # fmt: skip
