"""The LoRA folder: the files a request may name, and the one way a name becomes a path.

A request (the advanced mode, the HTTP API) names LoRAs by file name only, e.g.
`{"name": "house_black", "strength": 0.8}`; it never sends a path. A name is looked up among
the `.safetensors` files directly in the folder (no subfolders, no links out of it), so
`../../etc/passwd`, an absolute path, a pickle or a file that is not there is refused with an
error naming the field and what is allowed. The folder is listed on every request, so a file
dropped in while the server runs is offered at once. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .requests import RequestError

FIELD = "loras"
SUFFIX = ".safetensors"
MAX_NAME_CHARS = 200
MAX_STRENGTH = 4.0  # as fp8pipe.lora.MAX_STRENGTH (kept here so this module needs no torch)
MAX_REQUEST_LORAS = 4  # per request, unless the preset says otherwise


@dataclass(frozen=True)
class LoraLibrary:
    """The `.safetensors` files directly in `folder` (which may not exist yet: then none)."""

    folder: Path

    @classmethod
    def at(cls, folder: str | Path) -> LoraLibrary:
        return cls(Path(folder).expanduser().resolve())

    def files(self) -> dict[str, Path]:
        """name (the file name without .safetensors) -> path, sorted by name."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for path in sorted(self.folder.iterdir()):
            if path.suffix.lower() == SUFFIX and path.is_file() and self._inside(path):
                found[path.name[: -len(SUFFIX)]] = path
        return found

    def names(self) -> list[str]:
        return list(self.files())

    def _inside(self, path: Path) -> bool:
        """The file itself (links followed) lies in the folder: a link out of it is not offered."""
        try:
            return path.resolve().parent == self.folder
        except OSError:
            return False

    def path(self, name: str) -> Path:
        """The file a request's `name` means; RequestError (field `loras`) for anything else."""
        files = self.files()
        return files[canonical(name, files)]


def canonical(name: str, names) -> str:
    """`name` as listed (a trailing .safetensors is allowed); RequestError naming the choices otherwise."""
    if name in names:
        return name
    if name.lower().endswith(SUFFIX) and name[: -len(SUFFIX)] in names:
        return name[: -len(SUFFIX)]
    raise RequestError(FIELD, f"{_why(name)}; {choices(names)}")


def check_names(loras: tuple[tuple[str, float], ...], names) -> tuple[tuple[str, float], ...]:
    """Each (name, strength) with its name as the folder lists it."""
    out = tuple((canonical(name, names), strength) for name, strength in loras)
    if len({n for n, _ in out}) != len(out):
        raise RequestError(FIELD, f"each LoRA once; got {', '.join(n for n, _ in out)}")
    return out


def _why(name: str) -> str:
    if "/" in name or "\\" in name or name.startswith(("~", ".")) or ":" in name:
        return f"{name!r} is not a LoRA name: give a file name from the LoRA folder, never a path"
    if "." in name and not name.lower().endswith(SUFFIX):
        return f"{name!r} is not a .safetensors file: LoRAs are read from .safetensors files only (pickles can run code)"
    return f"no LoRA named {name!r} in the LoRA folder"


def choices(files) -> str:
    names = list(files)
    if not names:
        return "the LoRA folder has no .safetensors files"
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f"choose from: {shown}"


def parse_request_loras(value, max_loras: int = MAX_REQUEST_LORAS) -> tuple[tuple[str, float], ...]:
    """A request's `loras` as ((name, strength), ...): a list of {"name": str, "strength": number}
    (strength optional, default 1) or None. Checks shape, names' form, strengths and count; not
    whether the files exist (LoraLibrary.path does)."""
    if value is None or value == []:
        return ()
    if not isinstance(value, (list, tuple)):
        raise RequestError(FIELD, f'must be a list of {{"name": ..., "strength": ...}} objects; got {type(value).__name__}')
    if len(value) > max_loras:
        raise RequestError(FIELD, f"at most {max_loras} LoRAs per request; got {len(value)}")
    out = []
    for i, item in enumerate(value, 1):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "strength"}:
            got = f"keys {', '.join(sorted(str(k)[:20] for k in list(item)[:5]))}" if isinstance(item, dict) else type(item).__name__  # never a huge payload echoed
            raise RequestError(FIELD, f'item {i} must be an object with "name" and optionally "strength"; got {got}')
        name, strength = item["name"], item.get("strength", 1.0)
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            got = f"{len(name)} characters" if isinstance(name, str) else type(name).__name__
            raise RequestError(FIELD, f"item {i}: name must be a LoRA file name of 1 to {MAX_NAME_CHARS} characters; got {got}")
        if strength is None:
            strength = 1.0
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
            raise RequestError(FIELD, f"{name}: strength must be a number from -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}; got {strength!r}")
        out.append((name.strip(), float(strength)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise RequestError(FIELD, f"each LoRA once; got {', '.join(names)}")
    return tuple(out)


_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight", ".lora.down.weight", ".lora.up.weight",
                  ".lora_A.default.weight", ".lora_B.default.weight")


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB': the unit that keeps the number readable."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.4g} {unit}"
        n /= 1024
    return ""


def runtime_bytes(path: str | Path, dtype_bytes: int = 2) -> int:
    """What a LoRA file's A and B matrices take beside their layers in runtime mode (16-bit by
    default), from the safetensors header alone (no tensor is read); 0 for an unreadable file."""
    import json
    import struct

    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 << 20:
                return 0
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return 0
    total = 0
    for key, info in header.items():
        if key != "__metadata__" and isinstance(info, dict) and key.endswith(_LORA_SUFFIXES):
            total += math.prod(info.get("shape") or [0])
    return total * dtype_bytes
