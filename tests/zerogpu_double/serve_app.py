"""`python app.py` with one fault for tests: a prompt holding FAULT_WORD makes the job fail
inside the GPU call (in the forked child, under the spaces double). Run from the repository root."""

import runpy
import sys

from fp8pipe import engine

FAULT_WORD = "kaboom"
_run_stages = engine.run_stages


def run_stages(loaded, request, *args, **kwargs):
    if FAULT_WORD in request.prompt:
        raise RuntimeError("the GPU failed in this test")
    return _run_stages(loaded, request, *args, **kwargs)


engine.run_stages = run_stages
sys.argv = ["app.py", *sys.argv[1:]]
runpy.run_path("app.py", run_name="__main__")
