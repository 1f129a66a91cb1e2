"""The start-up probe: measured rates, cached per device, turned into the card `plan` predicts with."""

import dataclasses

import pytest
import torch

from fp8pipe import latency, planner, probe
from fp8pipe.cards import CARDS
from fp8pipe.sizes import GiB, Workload
from fp8pipe.specs import SPECS

TINY = {"size": 64, "copy_bytes": 1 << 16}


def test_the_probe_runs_on_the_cpu_with_tiny_sizes_and_reports_every_rate():
    rates = probe.probe_device(device="cpu", **TINY)
    assert set(rates) == {"bf16_matmul_tflops", "fp8_rowwise_scaled_mm_tflops", "device_copy_gbps", "h2d_pinned_gbps", "h2d_pageable_gbps", "d2h_pinned_gbps"}
    assert rates["bf16_matmul_tflops"] > 0 and rates["device_copy_gbps"] > 0
    assert rates["h2d_pinned_gbps"] is None  # no host-to-device link without a GPU


def test_the_probe_is_cached_per_device_and_read_back_without_measuring(tmp_path, monkeypatch):
    first = probe.probed("cpu", folder=tmp_path, **TINY)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and first["device"] == probe.device_name("cpu") and first["torch"] == torch.__version__

    def no_measuring(**_):
        raise AssertionError("measured again although the cache holds this device")

    monkeypatch.setattr(probe, "probe_device", no_measuring)
    assert probe.probed("cpu", folder=tmp_path, **TINY) == first


def test_a_refresh_or_another_torch_measures_again(tmp_path, monkeypatch):
    probe.probed("cpu", folder=tmp_path, **TINY)
    path = next(tmp_path.glob("*.json"))
    calls = []
    monkeypatch.setattr(probe, "probe_device", lambda **kw: calls.append(kw) or {"bf16_matmul_tflops": 1.0})
    probe.probed("cpu", refresh=True, folder=tmp_path, **TINY)
    path.write_text(path.read_text().replace(torch.__version__, "0.0-other"))
    probe.probed("cpu", folder=tmp_path, **TINY)
    path.write_text("{not json")
    probe.probed("cpu", folder=tmp_path, **TINY)
    assert len(calls) == 3


def _probe_of(card, fp8=None):
    """What a probe of `card` reads if it reaches the H100's probe shares of peak."""
    rates = {
        "bf16_matmul_tflops": card.bf16_tflops * 773 / 989.5,
        "fp8_rowwise_scaled_mm_tflops": fp8,
        "device_copy_gbps": card.memory_gbps * 2955 / 3350,
        "h2d_pinned_gbps": card.pcie_gbps * 0.85,
        "h2d_pageable_gbps": card.pcie_gbps * 0.27,
        "d2h_pinned_gbps": card.pcie_gbps * 0.85,
    }
    return {"device": "NVIDIA H100 80GB HBM3", "torch": torch.__version__, "rates": rates}


def test_a_probed_h100_predicts_what_the_named_h100_predicts():
    h100 = CARDS["H100 SXM"]
    probed = probe.card_from_probe(_probe_of(h100, fp8=1348.0), 80)
    assert probed.efficiency is not None and probed.card_class == "hopper" and probed.fp8_tflops == 1348.0
    job = planner.latency_job(SPECS["sd3.5-large"], "bf16", "resident", "drop", Workload(1024, 1024, 1, True, 28), False, None, "eager")
    named, measured = latency.predict(job, h100), latency.predict(job, probed)
    assert measured.latency_s == pytest.approx(named.latency_s, rel=0.02)


def test_fp8_matmul_counts_only_where_the_probe_found_it_faster_than_bf16():
    card = CARDS["RTX 4090"]
    slower = probe.card_from_probe({**_probe_of(card, fp8=1.0), "device": "some GPU"}, 24)
    assert slower.fp8_tflops is None and slower.card_class == "probed"
    faster = probe.card_from_probe({**_probe_of(card, fp8=card.bf16_tflops * 1.5), "device": "some GPU"}, 24)
    assert faster.fp8_tflops == card.bf16_tflops * 1.5


def test_a_faster_probe_predicts_a_faster_plan():
    card = CARDS["RTX 4090"]
    base = _probe_of(card)
    fast = {**base, "rates": {**base["rates"], "bf16_matmul_tflops": 2 * base["rates"]["bf16_matmul_tflops"]}}
    work = Workload(1024, 1024, 1, True, 28)
    slow_plan = planner.plan_placement(SPECS["sd3.5-medium"], 24 * GiB, 64 * GiB, work, "bf16", "sdpa", "drop", probe.card_from_probe(base, 24))
    fast_plan = planner.plan_placement(SPECS["sd3.5-medium"], 24 * GiB, 64 * GiB, work, "bf16", "sdpa", "drop", probe.card_from_probe(fast, 24))
    assert fast_plan.predicted_latency_s < slow_plan.predicted_latency_s
    assert fast_plan.card.startswith("probed ")


def test_without_cuda_there_is_no_probed_card():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert probe.probed_card() is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gpu_probe_measures_pcie_and_names_the_device(tmp_path):
    result = probe.probed("cuda", folder=tmp_path)
    assert result["rates"]["h2d_pinned_gbps"] > 0 and result["rates"]["bf16_matmul_tflops"] > 0
    card = probe.card_from_probe(result, 8)
    assert dataclasses.replace(card, efficiency=None).bf16_tflops == result["rates"]["bf16_matmul_tflops"]
