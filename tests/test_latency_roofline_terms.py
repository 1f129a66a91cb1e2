"""The latency model term by term, each isolated on a made-up card where the other terms vanish.

fp8pipe.latency is a roofline: per op class the longer of compute (FLOPs at the path's rate) and
traffic (bytes at the memory bandwidth), plus memory-bound kernels, plus PCIe streaming. A card
with a near-infinite rate for everything but one resource leaves that one term alone, so each
test checks one documented term against the FLOPs and bytes fp8pipe.flops counts. The near-
infinite rates (1e12 TFLOP/s, 1e12 GB/s) make the vanished terms at most ~1e-9 of the kept ones
(seconds of work against picoseconds): the comparisons allow a relative 1e-6.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fp8pipe import latency
from fp8pipe.cards import CARDS, EFFICIENCY, PEAK, Card
from fp8pipe.flops import encoder_flops, vae_decode_flops
from fp8pipe.sizes import component_sizes
from fp8pipe.specs import SPECS

LARGE = SPECS["sd3.5-large"]
INF = 1e12
REL = 1e-6


def _job(precision="bf16", steps=1, guidance=2.0, placement="resident", k=None, t5="drop", execution="eager", batch=1, tiled=False, width=1024, height=768):
    sizes = component_sizes(LARGE.name, precision if precision != "fp16" else "bf16")
    return latency.Job(
        spec=LARGE,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        precision=precision,
        execution=execution,
        t5=t5,
        batch=batch,
        block_bytes=sizes.transformer_block_bytes,
        rest_bytes=sizes.transformer - sizes.transformer_blocks,
        clip_bytes=sizes.clip_l + sizes.clip_g,
        t5_bytes={"16bit": sizes.t5_16bit, "cpu": sizes.t5_16bit, "fp8": sizes.t5_fp8}.get(t5, 0),
        vae_bytes=sizes.vae,
        placement=placement,
        resident_blocks=k,
        vae_tiled=tiled,
    )


def _card(fp8=INF, bf16=INF, memory=INF, pcie=INF, card_class="ada"):
    return Card("made-up", 24, fp8, bf16, memory, pcie, card_class)


def _stage(prediction, name):
    return next(s for s in prediction.stages if s.name == name)


@pytest.mark.parametrize("precision, fp8_card, value", [("bf16", True, 2), ("fp32", True, 4), ("fp8", True, 2), ("fp8", False, 2)])
def test_a_compute_bound_step_is_the_linear_flops_at_the_paths_rate_plus_attention_at_the_16bit_rate(precision, fp8_card, value):
    bf16, fp8 = 100.0, 300.0
    card = _card(fp8=fp8 if fp8_card else None, bf16=bf16)
    job = _job(precision)
    work = latency.pass_work(LARGE, 1024, 768)
    rows = 2  # classifier-free guidance: one batch-2 call
    rate16 = bf16 * 1e12 * (0.5 if precision == "fp32" else 1.0)  # fp32 runs at half the 16-bit tensor rate
    scaled = precision == "fp8" and fp8_card
    lin8 = work.block_linear_flops * rows if scaled else 0.0
    expected = (work.linear_flops * rows - lin8) / rate16 + lin8 / (fp8 * 1e12) + work.attention_flops * rows / rate16
    prediction = latency.predict(job, card, PEAK)
    assert prediction.step_floor_s == pytest.approx(expected, rel=REL)
    assert prediction.fp8_matmul is scaled
    eff = EFFICIENCY["ada"]  # each class at its own efficiency
    expected_eff = (work.linear_flops * rows - lin8) / (rate16 * eff.matmul) + lin8 / (fp8 * 1e12 * eff.matmul) + work.attention_flops * rows / (rate16 * eff.attention)
    assert latency.predict(job, card).step_s == pytest.approx(expected_eff, rel=REL)


@pytest.mark.parametrize("execution", ["eager", "compiled"])
@pytest.mark.parametrize("precision, fp8_card", [("bf16", True), ("fp8", True), ("fp8", False), ("fp32", False)])
def test_a_memory_bound_step_is_weights_activations_and_elementwise_traffic_at_the_bandwidth(precision, fp8_card, execution):
    gbps = 500.0
    card = _card(fp8=INF if fp8_card else None, memory=gbps)
    job = _job(precision, execution=execution)
    work = latency.pass_work(LARGE, 1024, 768)
    config = LARGE.transformer_config
    rows, d, layers = 2, config["num_attention_heads"] * config["attention_head_dim"], config["num_layers"]
    value = 4 if precision == "fp32" else 2
    scaled = precision == "fp8" and fp8_card
    weights = sum(job.block_bytes) + job.rest_bytes
    io = rows * (work.block_linear_in * (1 if scaled else value) + work.block_linear_out * value)  # E4M3 inputs on the scaled path
    elementwise = rows * (work.image_tokens + work.text_tokens) * d * value * latency.ELEMENTWISE_WIDTHS[execution] * layers
    quantizer = rows * work.block_linear_in * latency.QUANTIZER_BYTES[execution] if scaled else 0.0
    dequant = 0.0
    if precision == "fp8":  # weight-only layers dequantize once per call: AdaLN (a few rows) always, by casting the
        adaln = work.adaln_flops / 2  # weight and scaling the output; every block linear without scaled_mm, by the dequantizer
        dequant = adaln * latency.FEW_ROWS_DEQUANT_BYTES + (0.0 if scaled else sum(job.block_bytes) - adaln) * latency.DEQUANT_BYTES[execution]
    expected = (weights + io + elementwise + quantizer + dequant) / (gbps * 1e9)
    prediction = latency.predict(job, card, PEAK)
    assert prediction.step_floor_s == pytest.approx(expected, rel=REL)
    terms = _stage(latency.predict(job, card), "denoise").terms
    assert terms["quantizer_bytes"] == pytest.approx(quantizer, rel=REL) and terms["elementwise_bytes"] == pytest.approx(elementwise, rel=REL)
    assert latency.predict(job, card).step_s == pytest.approx(expected / EFFICIENCY["ada"].memory, rel=REL)


def test_the_linears_take_the_longer_of_compute_and_traffic_not_their_sum():
    job = _job("bf16")

    def linears(card):
        return _stage(latency.predict(job, card, PEAK), "denoise").terms["linears_s"]

    compute, traffic = linears(_card(bf16=50.0)), linears(_card(memory=200.0))
    assert linears(_card(bf16=50.0, memory=200.0)) == pytest.approx(max(compute, traffic), rel=REL)
    assert linears(_card(bf16=5.0, memory=200.0)) == pytest.approx(max(10 * compute, traffic), rel=REL)


@pytest.mark.parametrize("k", [0, 10, 37])
@pytest.mark.parametrize("precision", ["fp8", "bf16"])
def test_streamed_blocks_are_the_ones_not_resident(k, precision):
    job = _job(precision, placement="partial", k=k)
    assert latency.streamed_blocks(job) == 38 - k
    assert latency.streamed_bytes_per_step(job) == sum(job.block_bytes[k:])
    assert latency.streamed_bytes_per_step(replace(job, placement="group_offload", resident_blocks=0)) == sum(job.block_bytes)
    assert latency.streamed_bytes_per_step(replace(job, placement="sequential")) == sum(job.block_bytes) + job.rest_bytes
    for placement in ("resident", "model_offload"):
        assert latency.streamed_blocks(replace(job, placement=placement)) == 0 and latency.streamed_bytes_per_step(replace(job, placement=placement)) == 0
    assert latency.streamed_blocks(replace(job, block_bytes=())) == 38 - k  # without counted sizes: the config's layers


@pytest.mark.parametrize("precision", ["fp8", "bf16"])
def test_a_streaming_step_hides_the_copies_behind_compute_except_the_first_block(precision):
    k, pcie = 20, 10.0
    eff = EFFICIENCY["ada"]
    share = eff.stream_fp8 if precision == "fp8" else eff.stream_16bit
    rate = pcie * 1e9 * eff.pinned_h2d * share
    resident = _job(precision)
    job = _job(precision, placement="partial", k=k)
    streamed = sum(job.block_bytes[k:])
    first = job.block_bytes[k] / rate
    for gpu in (1e-3, 1.0, 1e3):  # the bus dominates, about even, compute dominates
        card = _card(fp8=gpu * 100, bf16=gpu * 50, memory=gpu * 300, pcie=pcie)
        device = latency.predict(resident, card).step_s
        part = streamed / sum(job.block_bytes)
        expected = device * (1 - part) + first + max(device * part, streamed / rate - first)
        prediction = latency.predict(job, card)
        assert prediction.step_s == pytest.approx(expected, rel=REL)
        assert _stage(prediction, "denoise").bound == ("pcie" if streamed / rate > device else "gpu")
        assert _stage(prediction, "denoise").terms["stream_s"] == pytest.approx(streamed / rate, rel=REL)
        assert _stage(prediction, "denoise").terms["streamed_bytes"] == streamed


def test_sequential_offload_copies_every_transformer_weight_from_pageable_memory_each_step_without_overlap():
    card = _card(bf16=50.0, memory=300.0, pcie=10.0)
    eff = EFFICIENCY["ada"]
    job = _job("fp8", placement="sequential")
    device = latency.predict(_job("fp8"), card).step_s
    copy = (sum(job.block_bytes) + job.rest_bytes) / (10.0 * 1e9 * eff.pageable_h2d)
    assert latency.predict(job, card).step_s == pytest.approx(device + copy, rel=REL)


@pytest.mark.parametrize("placement, moved", [("model_offload", "all"), ("sequential", "encoders"), ("resident", None), ("partial", None)])
@pytest.mark.parametrize("t5", ["16bit", "fp8", "cpu"])
def test_offload_moves_the_components_in_once_per_image_from_pageable_memory(placement, moved, t5):
    job = _job("fp8", placement=placement, k=10 if placement == "partial" else None, t5=t5)
    eff = EFFICIENCY["ada"]
    encoders = job.clip_bytes + job.vae_bytes + (job.t5_bytes if t5 != "cpu" else 0)  # T5 on the CPU is never moved
    bytes_moved = {"all": sum(job.block_bytes) + job.rest_bytes + encoders, "encoders": encoders, None: 0}[moved]
    prediction = latency.predict(job, _card(pcie=20.0))
    assert _stage(prediction, "offload").seconds == pytest.approx(bytes_moved / (20.0 * 1e9 * eff.pageable_h2d), rel=REL)


@pytest.mark.parametrize("guidance, prompts", [(2.0, 2), (1.0, 1)])
def test_text_encoding_is_clip_plus_t5_where_it_runs(guidance, prompts):
    bf16, gbps = 40.0, 300.0
    card = _card(bf16=bf16, memory=gbps)
    t5c = LARGE.t5_config
    params = t5c["d_model"] * t5c["d_ff"] * 3 * t5c["num_layers"] + 4 * t5c["d_model"] ** 2 * t5c["num_layers"]
    tokens = LARGE.max_sequence_length * prompts  # the negative prompt is encoded too under guidance
    drop = _job(guidance=guidance)
    clip = max(encoder_flops(drop.clip_bytes / 2, 77 * prompts) / (bf16 * 1e12), drop.clip_bytes / (gbps * 1e9))
    assert _stage(latency.predict(drop, card, PEAK), "encode").seconds == pytest.approx(clip, rel=REL)
    t5_16 = _job(guidance=guidance, t5="16bit")
    t5_time = max(encoder_flops(params, tokens) / (bf16 * 1e12), t5_16.t5_bytes / (gbps * 1e9))
    assert _stage(latency.predict(t5_16, card, PEAK), "encode").seconds == pytest.approx(clip + t5_time, rel=REL)
    t5_8 = _job(guidance=guidance, t5="fp8")
    t5_8_time = max(encoder_flops(params, tokens) / (bf16 * 1e12), t5_8.t5_bytes / (gbps * 1e9)) + params * latency.DEQUANT_BYTES["eager"] / (gbps * 1e9)
    assert _stage(latency.predict(t5_8, card, PEAK), "encode").seconds == pytest.approx(clip + t5_8_time, rel=REL)
    on_cpu = _job(guidance=guidance, t5="cpu")
    host = encoder_flops(on_cpu.t5_bytes / 2, tokens) / (latency.HOST_TFLOPS * 1e12)
    assert _stage(latency.predict(on_cpu, card, PEAK), "encode").seconds == pytest.approx(clip + host, rel=REL)
    eff = EFFICIENCY["ada"]  # the host's rate takes the matmul efficiency too
    clip_eff = max(encoder_flops(drop.clip_bytes / 2, 77 * prompts) / (bf16 * 1e12 * eff.matmul), drop.clip_bytes / (gbps * 1e9 * eff.memory))
    assert _stage(latency.predict(on_cpu, card), "encode").seconds == pytest.approx(clip_eff + host / eff.matmul, rel=REL)


@pytest.mark.parametrize("batch", [1, 3])
def test_decoding_is_the_vae_flops_per_image_at_the_conv_rate_and_tiles_overlap_by_a_quarter(batch):
    card = _card(bf16=40.0)
    flops = vae_decode_flops(LARGE.vae_config, 768, 1024) * batch
    whole = latency.predict(_job(batch=batch), card)
    assert _stage(whole, "decode").seconds == pytest.approx(flops / (40.0 * 1e12 * EFFICIENCY["ada"].conv), rel=REL)
    assert _stage(whole, "decode").floor_seconds == pytest.approx(flops / (40.0 * 1e12), rel=REL)
    tiled = latency.predict(_job(batch=batch, tiled=True), card)
    assert _stage(tiled, "decode").seconds == pytest.approx(1.25 * _stage(whole, "decode").seconds, rel=REL)


def test_the_latency_is_every_stage_plus_the_pipeline_overhead_and_the_floor_has_no_overhead():
    job = _job("fp8", steps=7, t5="fp8", placement="partial", k=30, tiled=True)
    card = CARDS["RTX 4060"]
    prediction = latency.predict(job, card)
    assert [s.name for s in prediction.stages] == ["encode", "denoise", "offload", "decode"]
    assert prediction.latency_s == pytest.approx(sum(s.seconds for s in prediction.stages) + latency.PIPELINE_OVERHEAD_S, rel=1e-12)
    assert prediction.floor_s == pytest.approx(sum(s.floor_seconds for s in prediction.stages), rel=1e-12)
    assert _stage(prediction, "denoise").seconds == pytest.approx(7 * prediction.step_s, rel=1e-12)
    assert _stage(prediction, "denoise").floor_seconds == pytest.approx(7 * prediction.step_floor_s, rel=1e-12)
    assert prediction.step_floor_s < prediction.step_s and prediction.floor_s < prediction.latency_s
    assert prediction.streamed_bytes_per_step == sum(job.block_bytes[30:]) and prediction.card == "RTX 4060"
    at_peak = latency.predict(job, card, PEAK)
    assert at_peak.latency_s == pytest.approx(at_peak.floor_s + latency.PIPELINE_OVERHEAD_S, rel=1e-12)
    assert all(_stage(prediction, n).bound == "" for n in ("encode", "offload", "decode"))
    assert _stage(prediction, "encode").terms == {} and "linears_s" in _stage(prediction, "denoise").terms
    d = prediction.as_dict()
    from dataclasses import asdict

    assert d["kind"] == "prediction" and d["stages"] == [asdict(s) for s in prediction.stages]  # a list, as JSON has


def test_a_job_runs_one_row_per_image_and_two_under_guidance():
    assert _job(guidance=1.0, batch=3).rows == 3 and _job(guidance=4.5, batch=3).rows == 6


def test_the_pass_work_counts_the_text_tokens_the_pipeline_feeds():
    work = latency.pass_work(LARGE, 1024, 768)
    assert work.text_tokens == 77 + LARGE.max_sequence_length and work.image_tokens == (1024 // 16) * (768 // 16)


def test_the_card_class_picks_the_efficiency_unless_one_is_given():
    job = _job("fp8")
    hopper = replace(CARDS["H100 SXM"], card_class="hopper")
    ada = replace(CARDS["H100 SXM"], card_class="ada")
    assert latency.predict(job, hopper).step_s != latency.predict(job, ada).step_s
    assert latency.predict(job, ada, EFFICIENCY["hopper"]).step_s == latency.predict(job, hopper).step_s


def test_the_pass_work_follows_the_specs_clip_length():
    assert latency.pass_work(replace(LARGE, clip_tokens=10), 1024, 768).text_tokens == 10 + LARGE.max_sequence_length


def test_a_step_with_nothing_streamed_is_gpu_bound_however_short():
    prediction = latency.predict(_job("fp8"), CARDS["H100 SXM"])
    assert prediction.step_s < 1.0 and _stage(prediction, "denoise").bound == "gpu"


def test_t5_on_the_gpu_encodes_at_the_matmul_efficiency_or_the_memory_efficiency():
    bf16, gbps = 40.0, 300.0
    eff = EFFICIENCY["ada"]
    t5c = LARGE.t5_config
    params = t5c["d_model"] * t5c["d_ff"] * 3 * t5c["num_layers"] + 4 * t5c["d_model"] ** 2 * t5c["num_layers"]
    for card in (_card(bf16=bf16, memory=gbps), _card(bf16=bf16 / 1000, memory=gbps), _card(bf16=bf16, memory=gbps / 1000)):
        job, drop = _job(t5="16bit"), _job()
        t5 = max(encoder_flops(params, LARGE.max_sequence_length * 2) / (card.bf16_tflops * 1e12 * eff.matmul), job.t5_bytes / (card.memory_gbps * 1e9 * eff.memory))
        got = _stage(latency.predict(job, card), "encode").seconds - _stage(latency.predict(drop, card), "encode").seconds
        assert got == pytest.approx(t5, rel=REL)
