"""How a bench row measures: speed switches (compile, fused quantizer), per-step timing with
CUDA events, host and device peaks, the VRAM cap, and the facts of the machine a run ran on."""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

import torch
from torch import nn

from ..compiling import compile_transformer_, fuse_activation_quant_  # noqa: F401 (re-exported)

GIB = 2**30


class StepTimer:
    """Times each transformer forward: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list = []
        self._start = None
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, *_):
        self._start = self._now()

    def _post(self, *_):
        self._marks.append((self._start, self._now()))

    def reset(self) -> None:
        self._marks = []

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in self._marks]
        return [b - a for a, b in self._marks]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def reset_host_peak() -> bool:
    """Reset the process's peak resident set (Linux clear_refs 5); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def apply_vram_limit(limit: int | None, device: torch.device) -> dict:
    """Cap this process's CUDA allocations at `limit` bytes, so a large card behaves like a small one."""
    if limit is None:
        return {"requested_bytes": None, "applied": False, "note": "no cap"}
    if device.type != "cuda":
        return {"requested_bytes": limit, "applied": False, "note": f"not applied: {device.type} device has no VRAM"}
    total = torch.cuda.get_device_properties(device).total_memory
    index = device.index if device.index is not None else torch.cuda.current_device()  # torch 2.11 wants an index
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), index)
    return {"requested_bytes": limit, "applied": True, "note": f"cap {limit / GIB:.2f} GiB of {total / GIB:.2f} GiB (set_per_process_memory_fraction)"}


def environment(device: torch.device) -> dict:
    import diffusers
    import transformers

    env = {
        "device": str(device),
        "device_name": None,
        "driver": None,
        "cuda_runtime": torch.version.cuda,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, vram_bytes=props.total_memory, compute_capability=f"{props.major}.{props.minor}", driver=_nvidia_driver())
    else:
        env["device_name"] = env["cpu"]
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
