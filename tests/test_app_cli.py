"""python app.py's flags: help, the --share warning, malformed values."""

import subprocess
import sys

import pytest
from conftest import ROOT

import app as webapp


def test_help_lists_every_flag():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    for flag in ("--kiosk", "--share", "--model", "--preset", "--host", "--port", "--auth", "--vram", "--queue-size"):
        assert flag in out


def test_share_without_auth_warns_before_anything_else(capsys):
    assert webapp.main(["--share", "--preset", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "warning: --share without --auth" in err
    assert "unknown preset 'no-such-preset'" in err


def test_share_with_auth_does_not_warn(capsys):
    assert webapp.main(["--share", "--auth", "me:secret", "--preset", "no-such-preset"]) == 2
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--auth", "nocolon"], ["--auth", ":pass"], ["--queue-size", "0"], ["--port", "70000"]])
def test_malformed_flags_are_refused_with_a_usage_error(argv):
    with pytest.raises(SystemExit) as exit_:
        webapp.parse_args(argv)
    assert exit_.value.code == 2


def test_python_app_py_serves_the_demo_model_on_the_cpu():
    """The README's run command, as a real process: it comes up and answers /generate."""
    import os
    import time

    from conftest import free_port
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "Running on local URL" in line or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "app.py exited"
        image, stats = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(prompt="a red ball", api_name="/generate")
        assert stats["model"] == "demo" and stats["device"] == "cpu" and image.endswith(".png")
    finally:
        proc.terminate()
        proc.wait(30)


def test_help_gives_host_and_port_defaults_and_their_environment_variables():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    flat = " ".join(out.split())
    assert "(default 127.0.0.1; env GRADIO_SERVER_NAME)" in flat and "(default 7860; env GRADIO_SERVER_PORT)" in flat
