"""Which FP8 path a CUDA device gets, decided from its compute capability.

`torch._scaled_mm` with E4M3 needs compute capability 8.9 (Ada) or later. A CPU-only machine
has no CUDA device, so these tests stand in for the two queries the decision makes
(`torch.cuda.is_available`, `torch.cuda.get_device_capability`) and pin the rule itself:
8.9 and 9.0 take scaled_mm, 8.6 and 8.8 do not, and the capability asked is the device's own.
"""

import pytest
import torch

from fp8pipe.fp8 import choose_path, fp8_matmul_available


@pytest.fixture
def cuda_of(monkeypatch):
    """Make torch report CUDA with the given capability per device index; records what was asked."""
    asked = []

    def install(capabilities: dict[int, tuple[int, int]], available: bool = True):
        def capability(device=None):
            asked.append(device)
            index = torch.device(device).index if device is not None else 0
            return capabilities[index or 0]

        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
        return asked

    return install


@pytest.mark.parametrize(("capability", "expected"), [((8, 6), False), ((8, 8), False), ((8, 9), True), ((9, 0), True), ((12, 0), True)])
def test_fp8_matmul_needs_compute_capability_8_9_or_later(cuda_of, capability, expected):
    cuda_of({0: capability})
    assert fp8_matmul_available(torch.device("cuda:0")) is expected
    assert fp8_matmul_available("cuda") is expected


def test_the_capability_asked_is_that_of_the_device_given(cuda_of):
    asked = cuda_of({0: (8, 6), 1: (9, 0)})  # an Ampere card beside a Hopper one
    assert fp8_matmul_available("cuda:1") is True
    assert fp8_matmul_available("cuda:0") is False
    assert [torch.device(d) for d in asked] == [torch.device("cuda:1"), torch.device("cuda:0")]


def test_without_cuda_a_cuda_device_has_no_fp8_matmul(cuda_of):
    cuda_of({0: (9, 0)}, available=False)
    assert fp8_matmul_available("cuda") is False


def test_a_device_that_is_neither_cpu_nor_cuda_has_no_fp8_matmul_even_beside_a_capable_gpu(cuda_of):
    cuda_of({0: (9, 0)})
    assert fp8_matmul_available("meta") is False
    assert choose_path("meta") == "upcast"


@pytest.mark.parametrize(("capability", "expected"), [((8, 6), "upcast"), ((8, 9), "scaled_mm"), ((9, 0), "scaled_mm")])
def test_auto_takes_scaled_mm_on_a_capable_gpu_and_upcast_on_an_older_one(cuda_of, capability, expected):
    cuda_of({0: capability})
    assert choose_path("cuda", "auto") == expected
    assert choose_path(torch.device("cuda:0")) == expected


def test_auto_on_a_second_gpu_follows_that_gpus_capability(cuda_of):
    cuda_of({0: (9, 0), 1: (8, 6)})
    assert choose_path("cuda:1") == "upcast"
    assert choose_path("cuda:0") == "scaled_mm"


def test_scaled_mm_asked_on_an_older_gpu_is_refused_by_name(cuda_of):
    cuda_of({0: (8, 6)})
    with pytest.raises(ValueError, match="scaled_mm needs compute capability >= 8.9"):
        choose_path("cuda", "scaled_mm")
    assert choose_path("cuda", "upcast") == "upcast"

