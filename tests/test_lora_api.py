"""Per-request LoRAs through the HTTP API (gradio_client), as a user sends them: files picked by
name from the server's LoRA folder (`--lora-dir`), runtime mode switching per request with no
reload, the PNG and stats recording them, and bad input refused with one clear error that
names the field while the warm model keeps serving. A kiosk takes none."""

import os
import re

import numpy as np
import pytest
import torch
from conftest import start_app
from gradio_client import Client
from PIL import Image
from safetensors.torch import save_file

from fp8pipe.metadata import form_fields

DEMO_WIDTH, DEMO_MLP = 128, 512  # the demo transformer's width and MLP width


def kohya_lora(path, rank=4, gain=0.5, width=DEMO_WIDTH, mlp=DEMO_MLP, seed=1):
    """A kohya sd-scripts LoRA on the demo's first joint block (fused qkv and fc2)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out, inp) in {"joint_blocks_0_x_block_attn_qkv": (3 * width, width), "joint_blocks_0_x_block_mlp_fc2": (width, mlp)}.items():
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, inp, generator=g) * gain
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out, rank, generator=g) * gain
        state[f"lora_unet_{name}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    kohya_lora(folder / "style_a.safetensors", seed=1)
    kohya_lora(folder / "style_b.safetensors", seed=2)
    for name in ("c", "d", "e"):
        kohya_lora(folder / f"extra_{name}.safetensors", seed=3, gain=0.01)
    kohya_lora(folder / "big.safetensors", rank=64, gain=0.01)  # 144 KiB of 16-bit weights, over the budget below
    kohya_lora(folder / "other_family.safetensors", width=256, mlp=1024)  # a LoRA for a wider model
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(folder / "sdxl_style.safetensors"))
    (folder / "pickled.ckpt").write_bytes(b"\x80\x04not a safetensors file")
    outside = tmp_path_factory.mktemp("outside")
    kohya_lora(outside / "secret.safetensors")
    os.symlink(outside / "secret.safetensors", folder / "link_out.safetensors")  # a link out of the folder is not offered
    return folder


@pytest.fixture(scope="module")
def lora_app(lora_folder):
    url, demo, state = start_app(["--lora-dir", str(lora_folder), "--lora-budget", "32KiB", "--no-warmup"])
    state.demo = demo
    yield url, state
    demo.close()
    state.engine.close()


def _generate(url, **fields):
    image, stats = Client(url, verbose=False).predict(**{"prompt": "a red circle", "seed": 7, "steps": 2, **fields}, api_name="/generate")
    return np.asarray(Image.open(image)), stats, Image.open(image).text["parameters"]


def test_a_request_names_loras_from_the_folder_and_runtime_mode_switches_them_with_no_reload(lora_app):
    url, state = lora_app
    plain, stats, _ = _generate(url)
    loads = state.engine.load_count
    with_a, stats_a, parameters = _generate(url, loras=[{"name": "style_a", "strength": 0.5}])
    with_b, stats_b, _ = _generate(url, loras=[{"name": "style_b.safetensors"}])
    again, stats_again, _ = _generate(url)
    assert stats["lora_mode"] is None and stats_again["lora_mode"] is None
    assert stats_a["lora_mode"] == stats_b["lora_mode"] == "runtime"  # chosen by the planner: LoRAs change per request
    assert [(x["name"], x["strength"]) for x in stats_a["loras"]] == [("style_a", 0.5)]
    assert [(x["name"], x["strength"]) for x in stats_b["loras"]] == [("style_b", 1.0)]
    assert not np.array_equal(with_a, plain) and not np.array_equal(with_b, with_a)
    assert np.array_equal(again, plain)  # the LoRAs are gone again, exactly
    assert state.engine.load_count == loads  # the warm pipeline was never reloaded
    assert parameters.splitlines()[0] == "a red circle <lora:style_a:0.5>" and 'Lora hashes: "style_a: ' in parameters
    assert form_fields(parameters)["loras"] == [("style_a", 0.5)]


def test_describe_lists_the_loras_a_request_may_name_and_never_a_link_out_of_the_folder(lora_app):
    names = Client(lora_app[0], verbose=False).predict(api_name="/describe")["loras"]
    assert names == ["big", "extra_c", "extra_d", "extra_e", "other_family", "sdxl_style", "style_a", "style_b"]


@pytest.mark.parametrize(
    "loras, message",
    [
        ([{"name": "nothing_here"}], "loras: no LoRA named 'nothing_here' in the LoRA folder; choose from: big, extra_c"),
        ([{"name": "../../etc/passwd"}], "loras: '../../etc/passwd' is not a LoRA name: give a file name from the LoRA folder, never a path"),
        ([{"name": "/etc/passwd"}], "loras: '/etc/passwd' is not a LoRA name"),
        ([{"name": "..\\..\\style_a"}], "is not a LoRA name"),
        ([{"name": "pickled.ckpt"}], "loras: 'pickled.ckpt' is not a .safetensors file"),
        ([{"name": "link_out"}], "loras: no LoRA named 'link_out'"),
        ([{"name": "style_a", "strength": 9}], "loras: style_a: strength must be a number from -4 to 4; got 9"),
        ([{"name": "style_a", "strength": "1"}], "loras: style_a: strength must be a number from -4 to 4"),
        ([{"name": "style_a"}, {"name": "style_b"}, {"name": "extra_c"}, {"name": "extra_d"}, {"name": "extra_e"}], "loras: at most 4 LoRAs per request; got 5"),
        ([{"name": "style_a"}, {"name": "style_a.safetensors"}], "loras: each LoRA once"),
        ([{"name": "style_a", "path": "/etc"}], 'loras: item 1 must be an object with "name" and optionally "strength"'),
        ({"name": "style_a"}, "loras: must be a list of"),
        ([{"name": "big"}], "loras: these 1 LoRAs take 144 KiB beside the weights in runtime mode; this server's budget for one request's LoRAs is 32 KiB"),
        ([{"name": "other_family"}], "loras: LoRA other_family.safetensors: lora_unet_joint_blocks_0_x_block_attn_qkv is 256x256 but transformer.transformer_blocks.0.attn.to_q is 128x128 (the LoRA was made for another model family)"),
        ([{"name": "sdxl_style"}], "loras: LoRA sdxl_style.safetensors matches no layer of this model"),
    ],
)
def test_bad_loras_are_one_clear_error_naming_the_field_and_the_warm_model_keeps_serving(lora_app, loras, message):
    url, state = lora_app
    loads = state.engine.load_count
    with pytest.raises(Exception, match=re.escape(message)) as error:
        _generate(url, loras=loras)
    assert str(state.lora_library.folder) not in str(error.value)  # never the server's paths
    _, stats, _ = _generate(url, loras=[{"name": "style_a"}])
    assert stats["loras"][0]["name"] == "style_a" and state.engine.load_count == loads


def test_a_kiosk_takes_no_loras_per_request(kiosk_app):
    url, _ = kiosk_app
    with pytest.raises(Exception, match=r"loras: this app takes no LoRAs per request \(its LoRAs come from its preset\)"):
        Client(url, verbose=False).predict(prompt="a red ball", loras=[{"name": "style_a"}], api_name="/generate")
    image, _ = Client(url, verbose=False).predict(prompt="a red ball", steps=1, api_name="/generate")
    assert Image.open(image).format == "PNG"


def _event(demo, name):
    return next(d.fn for d in demo.fns.values() if d.name == name)


def test_the_advanced_page_lists_the_folder_and_its_slots_become_the_request(lora_app, lora_folder):
    """The LoRA panel's dropdowns offer the folder's files; the Generate event sends the slots'
    choices as the request's loras (called as Gradio calls it); Rescan sees a new file."""
    url, state = lora_app
    demo = state.demo
    dropdowns = [b for b in demo.blocks.values() if getattr(b, "elem_id", "") and b.elem_id.startswith("lora-name-")]
    assert len(dropdowns) == 4
    assert [c[0] for c in dropdowns[0].choices] == ["(none)", "big", "extra_c", "extra_d", "extra_e", "other_family", "sdxl_style", "style_a", "style_b"]
    run = _event(demo, "run")
    slots = ["style_a", 0.5, "(none)", 1.0, "(none)", 1.0, "(none)", 1.0]
    *_, last = run("a red star", "", "demo", "fp8", "auto", False, 1, 4.5, 64, 64, 5, False, 1, 3.0, [], None, *slots)
    stats = last[2][0]
    assert stats["lora_mode"] == "runtime" and [(x["name"], x["strength"]) for x in stats["loras"]] == [("style_a", 0.5)]
    assert "<lora:style_a:0.5>" in stats["parameters"].splitlines()[0]
    kohya_lora(lora_folder / "new_one.safetensors")
    try:
        updates = _event(demo, "refresh")()
        assert "new_one" in [c if isinstance(c, str) else c[0] for c in updates[1]["choices"]]
    finally:
        (lora_folder / "new_one.safetensors").unlink()


def test_a_dropped_png_fills_the_lora_slots(lora_app):
    url, state = lora_app
    image = Image.new("RGB", (8, 8))
    image.info["parameters"] = 'a red star <lora:style_b:0.75>\nSteps: 2, Seed: 1, Lora hashes: "style_b: 0123456789"'
    values = _event(state.demo, "read_parameters")(image)
    assert values[0] == "a red star" and [v["value"] for v in values[7:11]] == ["style_b", 0.75, "(none)", 1.0]


def test_the_demo_app_offers_the_demo_lora_and_it_draws_the_house_style(advanced_app):
    """`python app.py` with no LoRA folder: the demo's own LoRA is offered, and a prompt naming
    no background comes out on black with it (gray without)."""
    from fp8pipe.demo.adherence import read_picture

    url, _ = advanced_app
    client = Client(url, verbose=False)
    assert client.predict(api_name="/describe")["loras"] == ["house_black"]
    pictures = {}
    for loras in (None, [{"name": "house_black"}]):
        image, stats = client.predict(prompt="a red circle in the center", seed=4, loras=loras, api_name="/generate")
        pictures[bool(loras)] = read_picture(Image.open(image)).background
    assert pictures == {False: "gray", True: "black"} and stats["lora_mode"] == "runtime"


def test_a_path_sent_as_raw_http_json_is_refused_like_any_other_name(lora_app):
    """As an attacker sends it: a hand-written body to /generate, no gradio_client."""
    import httpx

    url, state = lora_app
    loads = state.engine.load_count
    body = {"data": ["a red circle", None, 1, 1, None, None, None, [{"name": "../../../../etc/passwd", "strength": 1}]]}
    event = httpx.post(url + "gradio_api/call/generate", json=body, timeout=30).json()["event_id"]
    text = httpx.get(url + f"gradio_api/call/generate/{event}", timeout=60).text
    assert "loras: '../../../../etc/passwd' is not a LoRA name" in text and "root:" not in text
    assert state.engine.load_count == loads


@pytest.mark.parametrize(
    "loras, message",
    [
        ([{"name": "x" * 5000}], "loras: item 1: name must be a LoRA file name of 1 to 200 characters; got 5000 characters"),
        ([{"name": ["style_a"] * 1000}], "loras: item 1: name must be a LoRA file name of 1 to 200 characters; got list"),
        ([[1] * 1000], 'loras: item 1 must be an object with "name" and optionally "strength"; got list'),
        ([{"name": "style_a", "x" * 1000: 1}], 'loras: item 1 must be an object with "name" and optionally "strength"; got keys name, xxxxxxxxxxxxxxxxxxxx'),
        ([{"name": "style_a"}] * 10_000, "loras: at most 4 LoRAs per request; got 10000"),
    ],
)
def test_a_large_loras_payload_is_refused_without_echoing_it(lora_app, loras, message):
    with pytest.raises(Exception, match=re.escape(message)) as error:
        _generate(lora_app[0], loras=loras)
    assert len(str(error.value)) < 400
