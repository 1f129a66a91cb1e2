"""Where the app keeps the PNGs it makes: one folder, bounded, written atomically, removed at exit.

The folder sits inside the web server's file cache (the app passes that in), so the server
serves each PNG from where it was written instead of keeping a second copy. At most
`max_files` are kept; the oldest go first. A PNG is written under a temporary name and
renamed into place, so a full disk leaves no half-written file and gives one clear message.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .metadata import png_info


class SaveFailed(RuntimeError):
    """An image could not be written; the message is for people and holds no path."""


def write_png_atomically(image, path: Path, parameters: str) -> Path:
    """`image` as a PNG with its parameters chunk at `path`, all or nothing."""
    path = Path(path)
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=png_info(parameters))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def describe_os_error(e: OSError) -> str:
    """One line for people, without internal paths."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable"
    return os.strerror(e.errno) if e.errno else type(e).__name__


@dataclass
class OutputStore:
    """The app's PNGs: at most `max_files` in `folder`, the folder removed at exit."""

    folder: Path
    max_files: int = 256
    _paths: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, parent: str | Path, max_files: int = 256) -> "OutputStore":
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        store = cls(Path(tempfile.mkdtemp(prefix="fp8pipe-outputs-", dir=parent)), max_files)
        atexit.register(store.remove)
        return store

    def save(self, result) -> list[Path]:
        """Every image of a result as a PNG with its parameters chunk; returns the paths."""
        paths = []
        try:
            for image in getattr(result, "images", None) or [result.image]:
                paths.append(write_png_atomically(image, self.folder / f"{uuid.uuid4().hex}.png", result.parameters))
        except OSError as e:
            raise SaveFailed(f"The picture could not be saved: {describe_os_error(e)}.") from None
        with self._lock:
            self._paths.extend(paths)
            old, self._paths = self._paths[: -self.max_files], self._paths[-self.max_files :]
        for path in old:
            path.unlink(missing_ok=True)
        return paths

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
