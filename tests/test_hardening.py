"""Round two of the outside attack (issue 10), each defect through the door the attacker used:
HTTP and gradio_client for the app, the CLI and app.py as processes."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT, free_port
from gradio_client import Client

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


# ---- 2. the kiosk filter reads what the model receives, on the API too -------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "a nu\x00de statue"},  # a control character inside the word
        {"prompt": "a nu\u200bde statue"},  # zero-width space
        {"prompt": "a nu\u00adde statue"},  # soft hyphen
        {"prompt": "a n\u0443de statue".replace("\u0443", "u")},  # plain, as a control
        {"prompt": "a nud\u0435 statue"},  # Cyrillic e
        {"prompt": "a \uff4e\uff55\uff44\uff45 statue"},  # full-width letters
        {"prompt": "two NUDES"},  # plural
        {"prompt": "gored knights"},  # -ed
        {"prompt": "a n u d e statue"},  # spelled out
        {"prompt": "a statue", "negative_prompt": "gore"},  # the negative prompt is filtered too
    ],
    ids=lambda f: ascii(f)[:40],
)
def test_the_kiosk_filter_refuses_disguised_words_sent_to_the_api(kiosk_app, fields):
    url, _ = kiosk_app
    with pytest.raises(Exception, match="try a different idea"):
        Client(url, verbose=False).predict(**fields, steps=1, api_name="/generate")


# ---- 4 and 12. text and types are checked at the edge; the warm model stays -------------


API_INPUTS = 8  # /generate's inputs: prompt, negative_prompt, seed, steps, guidance, width, height, loras


def _raw_call(url, data: list) -> str:
    """/generate over plain HTTP with a hand-written JSON body (as an attacker sends it); the
    event stream's text."""
    import json

    body = json.dumps({"data": [*data, *[None] * (API_INPUTS - len(data))]})  # ensure_ascii: a lone surrogate goes out as \\ud800
    event = httpx.post(url + "gradio_api/call/generate", content=body, headers={"Content-Type": "application/json"}, timeout=30).json()["event_id"]
    return httpx.get(url + f"gradio_api/call/generate/{event}", timeout=60).text


@pytest.mark.parametrize(
    "data, message",
    [
        (["a \ud800 cat"], "prompt: must be valid Unicode text; character 3 is a lone surrogate (U+D800)"),
        (["a cat", "fog \udfff"], "negative_prompt: must be valid Unicode text; character 5 is a lone surrogate (U+DFFF)"),
    ],
    ids=["prompt", "negative_prompt"],
)
def test_a_lone_surrogate_over_http_is_refused_and_the_pipeline_stays_warm(advanced_app, data, message):
    url, state = advanced_app
    loads = state.engine.load_count
    assert message in _raw_call(url, data)
    image, _ = Client(url, verbose=False).predict(prompt="a red ball", steps=1, api_name="/generate")
    assert image.endswith(".png") and state.engine.load_count == loads


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": ["a", "cat"]}, "prompt: must be text; got list"),
        ({"prompt": 42}, "prompt: must be text; got int"),
        ({"prompt": "a cat", "guidance": True}, "guidance: must be a number; got bool"),
        ({"prompt": "a cat", "steps": "4"}, "steps: must be a number; got str"),
        ({"prompt": "\u200b\u200d\u2060\ufeff\u3164"}, "prompt: must not be empty"),
    ],
    ids=lambda v: ascii(v)[:40],
)
def test_bad_text_and_wrong_types_are_refused_and_the_pipeline_stays_warm(advanced_app, fields, message):
    url, state = advanced_app
    loads = state.engine.load_count
    with pytest.raises(Exception, match=message):
        Client(url, verbose=False).predict(**fields, api_name="/generate")
    image, _ = Client(url, verbose=False).predict(prompt="a red ball", steps=1, api_name="/generate")
    assert image.endswith(".png") and state.engine.load_count == loads


def test_a_failure_inside_the_tokenizer_keeps_the_pipeline_warm(advanced_app):
    url, state = advanced_app
    loads = state.engine.load_count

    def fail_in_encode(stage):
        if stage == "encode":
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "test: the tokenizer cannot read this")

    state.engine.fault_hook = fail_in_encode
    try:
        with pytest.raises(Exception, match="tokenizer cannot read"):
            Client(url, verbose=False).predict(prompt="a red ball", steps=1, api_name="/generate")
    finally:
        state.engine.fault_hook = None
    Client(url, verbose=False).predict(prompt="a red ball", steps=1, api_name="/generate")
    assert state.engine.load_count == loads and not [e for e in state.engine.events if e.get("why") == "failed"]


# ---- 5. uploads are bounded; the kiosk takes none ----------------------------------------


def _upload(url, size):
    return httpx.post(url + "gradio_api/upload", files={"files": ("a.png", b"\0" * size, "image/png")}, timeout=60)


def test_the_advanced_app_refuses_an_upload_over_its_size_limit(advanced_app):
    url, _ = advanced_app
    assert _upload(url, 21 * 2**20).status_code == 413
    assert _upload(url, 1024).status_code == 200


def test_the_kiosk_accepts_no_upload(kiosk_app):
    url, _ = kiosk_app
    assert _upload(url, 1024).status_code == 413


# ---- 6. a cancelled API job stops between steps -------------------------------------------


def test_a_cancelled_api_job_stops_at_the_next_step(advanced_app):
    from conftest import hold_at_denoise, demo_app_limits

    url, state = advanced_app
    jobs, submit = [], state.engine.submit
    state.engine.submit = lambda *a, **k: jobs.append(submit(*a, **k)) or jobs[-1]
    running, release = hold_at_denoise(state.engine)
    try:
        pending = Client(url, verbose=False).submit(prompt="nobody will see this", steps=demo_app_limits().max_steps, api_name="/generate")
        assert running.wait(30)
        pending.cancel()
        time.sleep(1.0)  # the cancel reaches the server
    finally:
        state.engine.fault_hook = None
        state.engine.submit = submit
        release.set()
    job = jobs[0]
    for _ in range(300):
        if job.done():
            break
        time.sleep(0.1)
    assert job.cancelled and job.step < demo_app_limits().max_steps


# ---- 7. outputs: one bounded copy ----------------------------------------------------------


def test_generated_images_are_served_from_the_one_output_folder(advanced_app):
    url, state = advanced_app
    image, _ = Client(url, verbose=False, download_files=False).predict(prompt="a red ball", steps=1, api_name="/generate")
    served = image["path"]
    assert os.path.dirname(served) == str(state.outputs.folder)


# ---- 13. the kiosk's /describe says nothing about the machine ----------------------------


def test_the_kiosk_describe_endpoint_reveals_no_machine_details(kiosk_app):
    url, _ = kiosk_app
    info = Client(url, verbose=False).predict(api_name="/describe")
    assert info == {"kiosk": True, "ready": True}


def test_the_kiosk_length_limit_counts_what_the_visitor_typed_not_the_style_suffix():
    from conftest import KIOSK_TEST_PRESET

    from fp8pipe.presets import parse_preset
    from fp8pipe.service import build_request
    from fp8pipe.specs import SPECS

    preset = parse_preset(KIOSK_TEST_PRESET.replace("[limits]\n", "[limits]\nmax_prompt_chars = 10\n"), "k.toml")
    request = build_request(preset, SPECS["demo"], "x" * 10, style="Bright")
    assert request.prompt == "x" * 10 + ", bright colors"


def test_a_style_suffix_holding_a_filter_word_is_refused():
    from fp8pipe.presets import parse_preset
    from fp8pipe.service import Refused, build_request
    from fp8pipe.specs import SPECS

    preset = parse_preset('name = "k"\nfilter_words = ["gore"]\n[[styles]]\nname = "Grim"\nsuffix = ", gory"\n', "k.toml")
    with pytest.raises(Refused):
        build_request(preset, SPECS["demo"], "a castle", style="Grim")


# ---- 8 and 11. the app as a process: clean stops, clear start-up errors ------------------


def _start_app(port, *extra, env=None):
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), *extra], cwd=ROOT, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "Running on local URL" in line or time.monotonic() > deadline:
            break
    assert proc.poll() is None, "".join(lines)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_generation_stops_the_app_cleanly_with_status_0(sig):
    from conftest import demo_app_limits

    port = free_port()
    proc = _start_app(port)
    limits = demo_app_limits()
    Client(f"http://127.0.0.1:{port}/", verbose=False).submit(prompt="running", steps=limits.max_steps, width=limits.max_size, height=limits.max_size, api_name="/generate")
    time.sleep(1.5)  # the job is running
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "terminate called" not in out and "Traceback" not in out
    assert "fp8pipe stopped" in out


def test_the_app_refuses_a_port_in_use_before_loading_the_model():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_app_refuses_a_cache_folder_it_cannot_write():
    env = {**ENV, "GRADIO_TEMP_DIR": "/etc/passwd/cache"}  # under a file: never writable, even as root
    done = subprocess.run([sys.executable, "app.py", "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Gradio's file cache (GRADIO_TEMP_DIR)" in done.stderr and "is not writable" in done.stderr
    assert "Traceback" not in done.stderr


# ---- 11 and 13. the CLI as a process ----------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fp8pipe", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def _model_copy(tmp_path, name, edit):
    import json
    import shutil

    folder = tmp_path / name
    shutil.copytree(ROOT / "fp8pipe" / "demo" / "model", folder)
    config = folder / "transformer" / "config.json"
    config.write_text(edit(json.loads(config.read_text())))
    return folder


def test_cli_start_up_errors_are_one_message_with_status_2(tmp_path):
    import json

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = [
        (["--model", str(loop)], "cannot be followed (a symlink loop)"),
        (["--model", str(_model_copy(tmp_path, "huge", lambda c: json.dumps({**c, "num_layers": 10**9})))], "num_layers = 1000000000 is not allowed"),
        (["--model", str(_model_copy(tmp_path, "negative", lambda c: json.dumps({**c, "attention_head_dim": -8})))], "attention_head_dim = -8 is not allowed"),
        (["--model", str(_model_copy(tmp_path, "notjson", lambda c: "{not json"))], "config.json in transformer/ is not a readable JSON file"),
        (["--out", str(tmp_path)], "is a folder; name a file in it"),
        (["--out", ""], "--out: must name a PNG file"),
        (["--out", "/etc/passwd/x.png"], "--out: cannot write in"),
        (["--device", "banana"], "unknown device 'banana'"),
    ]
    for extra, message in cases:
        args = {"--out": str(tmp_path / "x.png"), "--prompt": "a red ball", "--steps": "1"}
        args.update(dict(zip(extra[::2], extra[1::2])))
        done = _cli("generate", *[x for kv in args.items() for x in kv])
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr[-800:])
    assert not (tmp_path / "x.png").exists()


def test_soak_refuses_a_negative_request_count():
    done = _cli("soak", "--requests", "-5")
    assert done.returncode == 2 and "--requests: must be a whole number from 1 to" in done.stderr


# ---- 9. a full disk: one clear message, nothing half-written ----------------------------


def test_a_full_disk_on_the_cli_is_one_message_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    import errno

    from PIL import Image

    from fp8pipe.cli import main as cli

    def full(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    assert cli(["generate", "--prompt", "a red ball", "--steps", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "the disk is full; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_the_app_is_one_message_without_paths(tmp_path, monkeypatch):
    import errno

    from PIL import Image

    from fp8pipe.outputs import OutputStore, SaveFailed

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

    store = OutputStore(tmp_path)
    monkeypatch.setattr(Image.Image, "save", full)
    result = type("R", (), {"images": [Image.new("RGB", (8, 8))], "parameters": "x"})()
    with pytest.raises(SaveFailed) as err:
        store.save(result)
    assert str(err.value) == "The picture could not be saved: the disk is full." and list(tmp_path.iterdir()) == []


def test_the_output_folder_keeps_at_most_its_limit_and_is_removed(tmp_path):
    from PIL import Image

    from fp8pipe.outputs import OutputStore

    store = OutputStore.create(tmp_path, max_files=2)
    result = type("R", (), {"images": [Image.new("RGB", (8, 8))], "parameters": "x"})()
    paths = [store.save(result)[0] for _ in range(4)]
    assert sorted(store.folder.iterdir()) == sorted(paths[-2:])
    store.remove()
    assert not store.folder.exists()
