"""`python -m fp8pipe check`: one command that proves fp8pipe on this machine's GPU.

Stages, each run in its own child process (so a memory cap, an out-of-memory or a compile
cache of one stage cannot touch the next) under a wall-clock limit, each writing
`<out>/<stage>.json` and `<out>/<stage>.md` with the device, driver, versions and command:

1. tests   - `pytest -m gpu tests/test_gpu.py`: the CUDA-only tests
2. probe   - matmul rate per dtype, device memory and pinned host-to-device bandwidth
3. bench   - Medium, Large, Large Turbo at 1024 px: BF16 against FP8, eager and compiled,
             without a cap and under the VRAM cap (the planner's placement), ratios in-run
4. kiosk   - the kiosk preset through the engine's service path (what the app calls, minus
             HTTP) under the cap: cold and warm click-to-image latency, full-size random weights
5. planner - predicted against measured peak VRAM for three plans
6. soak    - 200 requests through the service path: GPU memory before and after

`runner` holds the orchestration and the report files; `stages` what each stage does.
Without CUDA every GPU stage is skipped with the reason, and the tests stage shows that
`pytest -m gpu` collects its tests and skips them.
"""

from .runner import STAGES, add_check_command, run_check

__all__ = ["STAGES", "add_check_command", "run_check"]
