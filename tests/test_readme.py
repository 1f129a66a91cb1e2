"""The README's figures come from the committed results, and its quick commands print them."""

import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT
from PIL import Image

from fp8pipe.metadata import parse_parameters

README = (ROOT / "README.md").read_text()


def run(command: str, cwd) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "python", command
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def quick_commands() -> dict[str, str]:
    block = re.search(r"<!-- quick-commands -->\n```bash\n(.*?)```\n<!-- /quick-commands -->", README, re.S).group(1)
    return {line.split()[3]: line for line in block.splitlines() if line.strip()}


def test_the_readme_figures_are_what_the_committed_results_give():
    proc = subprocess.run([sys.executable, "scripts/readme_figures.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_the_quick_generate_command_writes_a_picture_of_the_demo_with_a_printed_random_seed(tmp_path):
    proc = run(quick_commands()["generate"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    seed = re.search(r"seed (\d+) \(random; --seed \1 repeats this picture\)", proc.stderr).group(1)
    params = parse_parameters(Image.open(tmp_path / "star.png").text["parameters"])
    assert params["Seed"] == seed and params["Model"] == "demo"


def test_the_quick_policy_command_prints_the_bytes_the_readme_quotes(tmp_path):
    proc = run(quick_commands()["policy"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = re.search(r"weights: ([\d.]+) GiB FP8 against ([\d.]+) GiB BF16 \(([\d.]+)x\)", proc.stdout).groups()
    quoted = re.search(r"SD3\.5 Large: .*?\*\*([\d.]+) GiB in FP8 against ([\d.]+) GiB in BF16 \(([\d.]+)x\)\*\*", README, re.S).groups()
    assert printed == quoted


def test_the_quick_plan_command_prints_the_readme_planner_row(tmp_path):
    command = quick_commands()["plan"]
    proc = run(command, tmp_path)
    assert proc.returncode == 0, proc.stderr
    placement, t5, tiling = re.search(r"plan: (\w+).*?; T5 (\w+); VAE tiling (on|off)", proc.stdout).groups()
    peak = re.search(r"predicted peak: ([\d.]+) GiB VRAM", proc.stdout).group(1)
    latency, floor = re.search(r"predicted latency: ([\d.]+) s \(a prediction; floor ([\d.]+) s", proc.stdout).groups()
    row = f"| sd3.5-large-turbo | 1024 | RTX 4060 | {placement} | {t5} | {'yes' if tiling == 'on' else 'no'} | {peak} GiB | {latency} s | {floor} s |"
    assert row in README


def test_the_latency_table_is_what_the_model_generates():
    from fp8pipe.kiosk_choice import readme_block

    block = re.search(r"<!-- latency-table -->\n(.*?)<!-- /latency-table -->", README, re.S).group(1)
    assert block == readme_block()
