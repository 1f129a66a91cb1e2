"""Take it home: a QR code beside the kiosk's picture that opens that same PNG on a phone.

The code holds `<public url>/takehome/<name>.png`, where the public URL is the address the
visitors' phones reach (`--public-url`) and `<name>` is the picture's random file name in the
app's output folder (fp8pipe.outputs). The route serves the PNG byte for byte, parameters
chunk included, for as long as the output folder keeps it: a link expires when the picture
leaves the bounded folder (oldest first) or the app stops. Names are 32 random hex digits and
nothing else is served, so a link cannot be guessed or turned into a path.
"""

from __future__ import annotations

import re
from pathlib import Path

ROUTE = "/takehome"
_NAME = re.compile(r"[0-9a-f]{32}\.png")


def public_link(public_url: str, path: str | Path) -> str:
    """The address of the PNG at `path` (a file of the output folder) as visitors reach it."""
    return f"{public_url.rstrip('/')}{ROUTE}/{Path(path).name}"


def qr_code(link: str):
    """A PIL image of the QR code for `link`, black on white with the standard quiet zone."""
    import qrcode

    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
    code.add_data(link)
    code.make(fit=True)
    return code.make_image(fill_color="black", back_color="white").get_image().convert("RGB")


def check_public_url(value: str) -> str:
    """`value` if it is an http(s) address without a query, else ValueError naming the flag."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"--public-url {value!r} must be an http:// or https:// address such as http://192.168.1.20:7860")
    return value.rstrip("/")


def route(folder: Path):
    """A Starlette route that serves the output folder's PNGs by name, and nothing else."""
    from starlette.responses import FileResponse, PlainTextResponse
    from starlette.routing import Route

    folder = Path(folder)

    async def serve(request):
        name = request.path_params["name"]
        path = folder / name
        if not _NAME.fullmatch(name) or not path.is_file():
            return PlainTextResponse("This picture is no longer kept here.", status_code=404)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"}, content_disposition_type="inline", filename=f"fp8pipe-{name}")

    return Route(f"{ROUTE}/{{name}}", serve, methods=["GET"])
