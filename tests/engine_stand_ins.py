"""Stand-ins for the engine's loader and pipeline: no model is loaded, nothing is drawn.

The engine's only ways out are its loader and fp8pipe.generation.run_stages; the `stand_ins`
fixture replaces both with recorders that can hold a job on its denoise stage (a gate), so the
engine tests check order, waiting, cancelling and eviction as facts, never by timing.
"""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from fp8pipe import engine as engine_module
from fp8pipe import memory
from fp8pipe.engine import Engine
from fp8pipe.loader import LoadedModel
from fp8pipe.specs import SPECS

WAIT = 10  # seconds a stand-in waits for its gate before the test fails (a hang guard, not a measure)


class StandInTransformer(torch.nn.Identity):
    """Two blocks, as the engine's streamed-bytes counter hooks an MMDiT's transformer_blocks."""

    def __init__(self):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])


class StandInPipe:
    def __init__(self):
        self.transformer = StandInTransformer()
        self.hooks_removed = 0
        self._interrupt = False

    def remove_all_hooks(self):
        self.hooks_removed += 1


class StandIns:
    """The loader and run_stages: records calls; a prompt in `gates` waits for its Event."""

    def __init__(self):
        self.loads: list[tuple[str, str]] = []
        self.ran: list[str] = []
        self.steps: dict[str, int] = {}
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.running = 0
        self.most_at_once = 0
        self.fail: set[str] = set()
        self.options: list = []
        self.load_seconds = 0.0
        self.spec = SPECS["demo"]  # the spec a loaded pipeline reports

    def loader(self, model, options):
        self.loads.append((model, options.precision))
        self.options.append(options)
        return LoadedModel(StandInPipe(), model, "demo", self.spec, torch.device("cpu"), options, None, None, self.load_seconds)

    def run_stages(self, loaded, request, on_step=None, enter_stage=None):
        enter_stage = enter_stage or (lambda name: None)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            enter_stage("encode")
            self.ran.append(request.prompt)
            self.started.setdefault(request.prompt, threading.Event()).set()
            enter_stage("denoise")
            if request.prompt in self.gates:
                assert self.gates[request.prompt].wait(WAIT)
            if request.prompt in self.fail:
                raise ValueError(f"bad request {request.prompt}")
            for i in range(request.steps):
                if loaded.pipe._interrupt:
                    break
                self.steps[request.prompt] = i + 1
                on_step(loaded.pipe, i, 1000 - i, torch.zeros(1, 16, 8, 8))
            loaded.pipe._interrupt = False
            enter_stage("decode")
            return [Image.new("RGB", (request.width, request.height))], {"text_encode_s": 0.0, "denoise_s": 0.0, "decode_s": 0.0}
        finally:
            self.running -= 1

    def gate(self, prompt: str) -> threading.Event:
        self.gates[prompt] = threading.Event()
        self.started[prompt] = threading.Event()
        return self.gates[prompt]


@pytest.fixture
def stand_ins(monkeypatch):
    s = StandIns()
    monkeypatch.setattr(engine_module, "run_stages", s.run_stages)
    monkeypatch.setattr(memory, "apply_plan", lambda loaded, plan: {"placement": "resident", "attention": plan.attention})
    return s


def _engine(stand_ins, **kwargs) -> Engine:
    return Engine(device="cpu", warmup=False, loader=stand_ins.loader, host_budget=kwargs.pop("host_budget", "64GiB"), **kwargs)


def _submit(eng, prompt, steps=3, **kwargs):
    return eng.submit(eng.request(prompt=prompt, seed=1, steps=steps, width=64, height=64), **kwargs)


@pytest.fixture
def gpu_engine(stand_ins, monkeypatch):
    """gpu_engine(**Engine options): an engine whose device is "cuda" with every CUDA call replaced,
    so the pool counts VRAM between requests and pinned host weights as it does on a GPU."""
    calls = {"apply_plan": [], "free_memory": [], "tiling": []}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(engine_module, "peak_memory_bytes", lambda device: (0, "stand-in"))
    monkeypatch.setattr(engine_module, "free_memory", lambda device: calls["free_memory"].append(device))
    monkeypatch.setattr(memory, "apply_plan", lambda loaded, plan: calls["apply_plan"].append(loaded) or {"placement": plan.placement, "attention": plan.attention})

    def make(**kwargs):
        eng = Engine(device="cpu", warmup=False, loader=stand_ins.loader, vram_budget=kwargs.pop("vram_budget", "8GiB"), host_budget=kwargs.pop("host_budget", "64GiB"), **kwargs)
        eng.device = torch.device("cuda")
        eng._card = lambda: None
        eng.calls = calls
        return eng

    return make
