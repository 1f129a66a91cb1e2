"""Named cards and what fp8pipe assumes about them: published peaks and fitted efficiencies, as data.

Peaks are dense (no sparsity) tensor rates with FP32 accumulation in TFLOP/s, memory and PCIe
bandwidths in GB/s. Efficiencies are the share of those peaks the pipeline's kernels reach, per
card class, fitted to the H100 measurements in bench/results/gpu-check/ and bounded by the
published ranges; docs/latency_model.md lists each source. Pure data: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    name: str
    vram_gib: float
    fp8_tflops: float | None  # None: no FP8 tensor cores (the FP8 weights run the upcast path)
    bf16_tflops: float
    memory_gbps: float
    pcie_gbps: float  # one direction, the link's theoretical rate
    card_class: str = "ada"
    efficiency: Efficiency | None = None  # a probed card's own (fp8pipe/probe.py); else its class's


@dataclass(frozen=True)
class Efficiency:
    """Share of a card's peak each op class reaches in the pipeline (1.0 = the floor)."""

    matmul: float  # GEMMs (16-bit and FP8 scaled_mm) of the transformer
    attention: float  # SDPA (flash / memory-efficient), 16-bit
    conv: float  # the VAE decoder's convolutions
    memory: float  # elementwise and quantizer kernels against memory bandwidth
    pinned_h2d: float  # pinned host-to-device copies against the link's theoretical rate
    stream_16bit: float  # group-offload streaming of 16-bit blocks, as a share of pinned H2D
    stream_fp8: float  # ... of FP8 blocks (E4M3 weights + float32 scales)
    pageable_h2d: float  # model / sequential offload (.to(device) from pageable memory), of the link


PEAK = Efficiency(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)

# Hopper: fitted to the H100 runs (probe: bf16 matmul 773 of 989.5 TFLOP/s, FP8 scaled_mm 1348
# of 1979, device copy 2955 of 3350 GB/s, pinned H2D 53.4 and pageable 17.1 of 63 GB/s; the
# group-offloaded steps streamed 16-bit blocks at ~36 GB/s and FP8 blocks at 11-20 GB/s).
# Consumer (GeForce) Ada: matmul, attention and memory refitted to the published RTX 4090 run in
# docs/published_timings.toml (OneDiff's plain-diffusers SD3 Medium: 0.150 s per step, 4.90 s per
# image; the old 0.75 / 0.50 / 0.70 predicted 1.52x and 1.36x, the step's floor equal to the
# measurement). One factor scales the three old shares; the least-squares fit of the two rows wants
# more than 4/3, which would put GEMMs above the whitepaper peak, so it is capped there (4/3:
# 1.00 / 0.67 / 0.93; predicted 1.14x and 1.03x). Convolutions and the PCIe shares have no Ada
# measurement and stay as they were.
# Other classes: the published ranges of end-to-end efficiency (Hopper 0.27-0.45 of peak,
# A100 0.34-0.51, consumer Ada 0.4-0.72) scaled from the Hopper fit; PCIe shares assumed equal.
# "ada-dc" (the L4, a 72 W card) keeps the old Ada shares: the GeForce fit says nothing about it.
EFFICIENCY: dict[str, Efficiency] = {
    "hopper": Efficiency(matmul=0.62, attention=0.40, conv=0.10, memory=0.60, pinned_h2d=0.85, stream_16bit=0.68, stream_fp8=0.28, pageable_h2d=0.27),
    "ampere-dc": Efficiency(matmul=0.70, attention=0.45, conv=0.20, memory=0.65, pinned_h2d=0.85, stream_16bit=0.68, stream_fp8=0.28, pageable_h2d=0.27),
    "ada": Efficiency(matmul=1.00, attention=0.67, conv=0.30, memory=0.93, pinned_h2d=0.85, stream_16bit=0.68, stream_fp8=0.28, pageable_h2d=0.27),
    "ada-dc": Efficiency(matmul=0.75, attention=0.50, conv=0.30, memory=0.70, pinned_h2d=0.85, stream_16bit=0.68, stream_fp8=0.28, pageable_h2d=0.27),
    "ampere": Efficiency(matmul=0.75, attention=0.50, conv=0.30, memory=0.70, pinned_h2d=0.85, stream_16bit=0.68, stream_fp8=0.28, pageable_h2d=0.27),
}

# RTX 4090: NVIDIA's "Ada GPU Architecture" whitepaper (dense FP8 / BF16 with FP32 accumulate:
# 330.3 / 165.2). RTX 4060 and 4070 Ti: the same per-SM Ada rate x SM count x boost clock.
# RTX 3060: GA102 whitepaper per-SM rate x 28 SMs x 1.777 GHz, no FP8. L4, A100 and H100 SXM:
# NVIDIA datasheets, sparse figures halved. Bandwidths from the product pages; PCIe 4.0 x16
# 31.5 GB/s (RTX 4060: x8, 15.75), 5.0 x16 63 GB/s (H100).
CARDS: dict[str, Card] = {
    c.name: c
    for c in (
        Card("RTX 4060", 8, 60.5, 30.2, 272, 15.75, "ada"),
        Card("RTX 3060", 12, None, 25.5, 360, 31.5, "ampere"),
        Card("RTX 4070 Ti", 12, 160.4, 80.2, 504, 31.5, "ada"),
        Card("RTX 4090", 24, 330.3, 165.2, 1008, 31.5, "ada"),
        Card("L4", 24, 242.5, 121.0, 300, 31.5, "ada-dc"),
        Card("A100 80GB", 80, None, 312.0, 2039, 31.5, "ampere-dc"),
        Card("A100 40GB", 40, None, 312.0, 1555, 31.5, "ampere-dc"),  # the PCIe card
        Card("H100 SXM", 80, 1979.0, 989.5, 3350, 63.0, "hopper"),
    )
}


def find_card(name: str) -> Card:
    """The card of that name (case and spaces ignored); a ValueError names the known ones."""
    key = name.replace(" ", "").lower()
    for card in CARDS.values():
        if card.name.replace(" ", "").lower() == key:
            return card
    raise ValueError(f"card must be one of {', '.join(CARDS)}; got {name!r}")


def card_for_device_name(device_name: str) -> Card | None:
    """The named card a CUDA device is (by its name, e.g. 'NVIDIA H100 80GB HBM3'), or None."""
    name = device_name.replace(" ", "").lower()
    for key, card in (("h100", "H100 SXM"), ("a100-pcie-40gb", "A100 40GB"), ("a100", "A100 80GB"), ("l4", "L4"), ("4090", "RTX 4090"), ("4070ti", "RTX 4070 Ti"), ("4060", "RTX 4060"), ("3060", "RTX 3060")):
        if key in name:
            return CARDS[card]
    return None
