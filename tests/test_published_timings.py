"""The latency model against other people's published SD3 timings (docs/published_timings.toml):
each prediction lands within the issue's band of the time its source states."""

import tomllib

from fp8pipe import latency_check
from fp8pipe.cards import CARDS


def _timings():
    return tomllib.loads(latency_check.PUBLISHED.read_text())["timing"]


def test_every_published_timing_names_a_known_card_a_source_and_its_settings():
    timings = _timings()
    assert len(timings) >= 2
    for t in timings:
        assert t["card"] in CARDS
        assert t["source"].startswith("https://")
        assert {"model", "precision", "execution", "t5", "px", "steps", "guidance", "seconds"} <= set(t)
        assert t.get("quantity", "image") in ("image", "step")


def test_a_per_step_timing_is_compared_with_the_predicted_step_not_the_whole_image():
    timings = _timings()
    rows = latency_check.published_rows()
    for t, r in zip(timings, rows, strict=True):
        assert r["quantity"] == t.get("quantity", "image")
        assert r["measured"] == t["seconds"]
    step = next(r for r in rows if r["quantity"] == "step")
    image = next(r for r in rows if r["quantity"] == "image")
    assert step["predicted"] < image["predicted"] / 10


def test_every_published_timing_is_predicted_within_the_band_and_above_its_floor():
    rows = latency_check.published_rows()
    assert len(rows) == len(_timings())
    low, high = latency_check.BAND
    for r in rows:
        assert low <= r["ratio"] <= high, (r["configuration"], round(r["ratio"], 2))
        assert r["floor"] <= r["predicted"]


def test_sd3_medium_v1_has_no_qk_norm_so_its_blocks_move_less_elementwise_traffic():
    import dataclasses

    from fp8pipe import latency

    t = next(t for t in _timings() if t["model"] == "sd3-medium")
    v1 = latency_check._published_job(t)
    normed = dataclasses.replace(v1.spec, transformer_config={**v1.spec.transformer_config, "qk_norm": "rms_norm"})
    with_norm = dataclasses.replace(v1, spec=normed)
    card = CARDS[t["card"]]
    assert latency.predict(v1, card).step_s < latency.predict(with_norm, card).step_s
