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
