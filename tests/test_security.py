"""Security: only the files Gradio must serve are reachable, and nothing is ever unpickled."""

import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import ROOT
from gradio_client import Client

SECRET_MARKERS = ("root:x:0:0", "def create_app", "GRADIO_ANALYTICS_ENABLED")


def _generated_file_url(url):
    result = Client(url, verbose=False, download_files=False).predict(prompt="a red ball", steps=1, api_name="/generate")
    return result[0]["url"]


def test_a_generated_image_is_served(advanced_app):
    url, _ = advanced_app
    response = httpx.get(_generated_file_url(url))
    assert response.status_code == 200 and response.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "target",
    [
        str(ROOT / "app.py"),
        "app.py",
        "../app.py",
        "/etc/passwd",
        "../../../../../../etc/passwd",
        quote("/etc/passwd", safe=""),
        str(ROOT / "fp8pipe" / "loader.py"),
        str(ROOT / "presets" / "kiosk-8gb.toml"),
    ],
)
@pytest.mark.parametrize("route", ["gradio_api/file=", "file=", "gradio_api/file/"])
def test_source_files_and_system_files_are_not_reachable_through_file_routes(advanced_app, route, target):
    url, _ = advanced_app
    response = httpx.get(url + route + target, follow_redirects=True)
    assert response.status_code >= 400
    assert not any(marker in response.text for marker in SECRET_MARKERS)


def test_the_cache_route_does_not_escape_to_its_parent(advanced_app):
    url, _ = advanced_app
    image_url = _generated_file_url(url)
    escaped = re.sub(r"/[^/]+\.png$", "/../../../../../etc/passwd", image_url)
    response = httpx.get(escaped)
    assert response.status_code >= 400 and "root:x:0:0" not in response.text


def test_no_code_path_unpickles():
    sources = [*Path(ROOT / "fp8pipe").rglob("*.py"), ROOT / "app.py"]
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|use_safetensors\s*=\s*False")
    offenders = [f"{p.name}:{n}" for p in sources for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
