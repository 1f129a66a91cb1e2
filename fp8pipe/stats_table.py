"""A generation's stats as a small table a person reads at a glance (the JSON stays behind a toggle).

One column per image: latency split into its stages, peak memory, the plan, the FP8 path,
the LoRAs and their mode, and any warning (such as prompt words the demo model does not know).
"""

from __future__ import annotations

MIB = 2**20


def _seconds(value) -> str:
    return f"{value:.3f} s" if isinstance(value, (int, float)) else "-"


def _memory(stats: dict) -> str:
    peak = stats.get("peak_memory_bytes")
    if not isinstance(peak, (int, float)):
        return "-"
    what = {"cuda_max_allocated": "GPU", "host_peak_rss": "host RSS"}.get(stats.get("peak_memory_kind"), "")
    return f"{peak / MIB:,.0f} MiB {what}".strip()


def _plan(stats: dict) -> str:
    plan = stats.get("plan") or {}
    if not plan:
        return "-"
    parts = [str(plan.get("placement", "?")), f"T5 {plan.get('t5', '?')}"]
    if plan.get("vae_tiling"):
        parts.append("VAE tiled")
    return ", ".join(parts)


def _loras(stats: dict) -> str:
    loras = stats.get("loras") or []
    if not loras:
        return "none"
    return ", ".join(f"{x.get('name')} {x.get('strength', 1):g}" for x in loras) + f" ({stats.get('lora_mode')})"


ROWS = (
    ("total", lambda s: _seconds(s.get("latency_s"))),
    ("text encoding", lambda s: _seconds(s.get("text_encode_s"))),
    ("denoise", lambda s: _seconds(s.get("denoise_s"))),
    ("decode", lambda s: _seconds(s.get("decode_s"))),
    ("queue wait", lambda s: _seconds(s.get("queue_wait_s"))),
    ("peak memory", _memory),
    ("plan", _plan),
    ("FP8 path", lambda s: s.get("fp8_path") or "none (not fp8)"),
    ("LoRAs", _loras),
    ("device", lambda s: str(s.get("device", "-"))),
)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def stats_markdown(all_stats: list[dict]) -> str:
    """A Markdown table, one column per image (compare entries become a line under it)."""
    images = [s for s in all_stats if "latency_s" in s]
    if not images:
        return ""
    heads = [f"{s.get('precision', '?')}, seed {s.get('seed', '?')}" for s in images]
    lines = ["| | " + " | ".join(map(_cell, heads)) + " |", "|:--|" + "--:|" * len(images)]
    lines += ["| " + name + " | " + " | ".join(_cell(value(s)) for s in images) + " |" for name, value in ROWS]
    for extra in all_stats:
        if "compare" in extra:
            c = extra["compare"]
            lines.append(f"\nFP8 against BF16: PSNR {c.get('psnr_db')} dB, mean |difference| {c.get('mean_abs_diff')} of 255")
    warnings = list(dict.fromkeys(s["warning"] for s in images if s.get("warning")))
    lines += [f"\n**Note:** {w}" for w in warnings]
    return "\n".join(lines)
