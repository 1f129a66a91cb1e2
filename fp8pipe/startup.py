"""Starting and stopping the app cleanly: checks that fail in a second run before a model is
loaded (the port, writable folders), and a clean exit on Ctrl-C or SIGTERM.

Exit: the server stops taking requests, the running job stops at its next step, the queued
ones are failed, the output folder is removed, and the process exits with status 0.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path


class StartupError(RuntimeError):
    """The app cannot start; the message says why and how to fix it."""


def check_port_free(host: str, port: int) -> None:
    """Refuse at once when another program listens on `port` (instead of after loading a model)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartupError(f"port {port} on {host} is already in use; stop the program using it or pass --port with another number") from None
            raise StartupError(f"cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port") from None


def check_writable_folder(folder, what: str) -> Path:
    """`folder` exists (made if needed) and a file can be written in it; else a StartupError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fp8pipe-check-"):
            pass
    except OSError as e:
        raise StartupError(f"{what} ({folder}) is not writable ({e.strerror or type(e).__name__}); point it at a writable folder") from None
    return folder


def stop_on_signals() -> None:
    """SIGTERM stops the app the way Ctrl-C (SIGINT) does: a KeyboardInterrupt in the main thread."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def exit_cleanly(demo, engine, outputs, timeout: float = 5.0) -> None:
    """Stop the server, stop the running job between steps, remove the outputs. A second signal
    meanwhile is ignored. When the job does not stop within `timeout`, the process ends here
    (status 0) rather than tearing down the interpreter under a running computation."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        demo.close()
    except Exception:  # already closed by Gradio's own Ctrl-C handling
        pass
    stopped = engine.close(timeout=timeout, cancel_running=True)
    outputs.remove()
    print("fp8pipe stopped", file=sys.stderr)
    if not stopped:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(0)
