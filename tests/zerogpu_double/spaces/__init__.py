"""A test double of Hugging Face's `spaces` package (ZeroGPU), for tests only.

It behaves as `spaces/zero/wrappers.py` (spaces 0.51) does where it matters to an app:
- `@spaces.GPU` (bare, or with `duration=` a number or a callable of the handler's own
  arguments, and `size=`) returns the function unchanged unless SPACES_ZERO_GPU is set;
- each call runs in a child process forked with multiprocessing's fork context, reused while
  it is idle; a fork holds only the calling thread, so work handed to another thread of the
  parent never runs there;
- in the child the task runs on a thread of its own; arguments and results cross in pickles
  through pipes; a generator's items come back one by one, and when the parent's generator is
  closed (a cancel) the child closes its generator at its next item and the worker is reused;
- Gradio's own `import spaces`, while Gradio itself is still importing, fails (as the real
  package makes it: only the app imports it); `gradio_auto_wrap` and its switches exist;
- an exception in the child comes back as the same gr.Error when it is one, else as
  gr.Error("ZeroGPU worker error", <exception class>); a child that dies is "GPU task aborted".

What it adds for tests: with SPACES_DOUBLE_LOG set, each call appends one JSON line
{"function", "duration"} (the requested duration in seconds) to that file.
No GPU, no quota, no scheduler.
"""

from __future__ import annotations

import functools
import inspect
import json
import multiprocessing
import os
import sys
import threading
import traceback
from datetime import timedelta

if (_gr := sys.modules.get("gradio")) is not None and not hasattr(_gr, "Blocks"):
    raise ImportError("spaces is imported by the app, not by Gradio itself")

_ctx = multiprocessing.get_context("fork")
forked = False  # True in a child: a nested GPU call runs in place, as in the real package


def _active() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes")


def GPU(task=None, *, duration=None, size=None, **kwargs):
    """The ZeroGPU decorator: see the module docstring."""
    if not callable(task):
        if task is not None:  # @spaces.GPU(45)
            duration = task
        return functools.partial(_decorate, duration=duration, size=size)
    return _decorate(task, duration, size)


_auto_wrap = os.environ.get("SPACES_GRADIO_AUTO_WRAP", "").lower() in ("1", "t", "true")


def gradio_auto_wrap(task):
    """What Gradio calls on every event function on a Space: GPU(task) when auto-wrap is on."""
    return GPU(task) if _auto_wrap and callable(task) else task


def disable_gradio_auto_wrap():
    global _auto_wrap
    _auto_wrap = False


def enable_gradio_auto_wrap():
    global _auto_wrap
    _auto_wrap = True


def _decorate(task, duration=None, size=None):
    if not _active():
        return task
    if inspect.iscoroutinefunction(task):
        raise NotImplementedError
    if inspect.isgeneratorfunction(task):
        return _generator_wrapper(task, duration)
    return _regular_wrapper(task, duration)


def _record(task, duration, args, kwargs) -> None:
    """Compute the requested duration as the real package does (a callable gets the call's own
    arguments; None means 60 s) and log it when SPACES_DOUBLE_LOG names a file."""
    seconds = duration(*args, **kwargs) if callable(duration) else duration
    seconds = 60.0 if seconds is None else seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
    path = os.environ.get("SPACES_DOUBLE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"function": task.__name__, "duration": seconds}) + "\n")


class _Worker:
    """One forked child running `task` calls one at a time, and a sentinel that notices its death."""

    def __init__(self, task, generator: bool):
        self.args = _ctx.SimpleQueue()
        self.results = _ctx.SimpleQueue()
        self.stop = _ctx.Event()
        self.process = _ctx.Process(target=_child, args=(task, generator, self.args, self.results, self.stop), daemon=True)
        self.process.start()
        threading.Thread(target=self._sentinel, daemon=True).start()

    def _sentinel(self) -> None:
        self.process.join()
        self.results.put(None)  # the child died: whoever waits gets "aborted"


def _error_of(e: BaseException) -> tuple:
    import gradio as gr

    return ("error", "".join(traceback.format_exception(type(e), e, e.__traceback__)), type(e).__name__, e if isinstance(e, gr.Error) else None)


def _put(results, item) -> None:
    try:
        results.put(item)
    except Exception as e:  # an unpicklable result is an error of the call, as in the real package
        results.put(_error_of(e))


def _child(task, generator, args_queue, results, stop) -> None:
    global forked
    forked = True
    while True:
        try:
            item = args_queue.get()
        except (OSError, EOFError):
            return
        if item is None:
            return
        args, kwargs = item
        stop.clear()

        def run():
            if not generator:
                try:
                    _put(results, ("ok", task(*args, **kwargs)))
                except Exception as e:
                    _put(results, _error_of(e))
                return
            try:
                gen = task(*args, **kwargs)
                while True:
                    try:
                        value = next(gen)
                    except StopIteration:
                        break
                    if stop.is_set():
                        gen.close()
                        break
                    _put(results, ("ok", value))
            except Exception as e:
                _put(results, _error_of(e))
            _put(results, ("end",))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()


def _raise(item):
    import gradio as gr

    if item is None:
        raise gr.Error("GPU task aborted", title="ZeroGPU worker error")
    _, text, cls, gradio_error = item
    if gradio_error is not None:
        raise gradio_error
    print(text)
    raise gr.Error(cls, title="ZeroGPU worker error")


def _take(idle: list, task, generator: bool) -> _Worker:
    while idle:
        worker = idle.pop()
        if worker.process.is_alive():
            return worker
    return _Worker(task, generator)


def _regular_wrapper(task, duration):
    idle: list[_Worker] = []

    @functools.wraps(task)
    def handler(*args, **kwargs):
        if forked:
            return task(*args, **kwargs)
        _record(task, duration, args, kwargs)
        worker = _take(idle, task, False)
        worker.args.put((args, kwargs))
        item = worker.results.get()
        if item is not None and item[0] == "ok":
            idle.append(worker)
            return item[1]
        _raise(item)

    return handler


def _generator_wrapper(task, duration):
    idle: list[_Worker] = []

    @functools.wraps(task)
    def handler(*args, **kwargs):
        if forked:
            yield from task(*args, **kwargs)
            return
        _record(task, duration, args, kwargs)
        worker = _take(idle, task, True)
        worker.args.put((args, kwargs))
        while True:
            item = worker.results.get()
            if item is None or item[0] == "error":
                if item is not None:
                    worker.results.get()  # its "end"
                    idle.append(worker)
                _raise(item)
            if item[0] == "end":
                idle.append(worker)
                return
            try:
                yield item[1]
            except GeneratorExit:  # cancelled: the child stops at its next item; reuse it after
                worker.stop.set()
                threading.Thread(target=_drain, args=(worker, idle), daemon=True).start()
                raise

    return handler


def _drain(worker: _Worker, idle: list) -> None:
    while True:
        item = worker.results.get()
        if item is None:
            return
        if item[0] == "end":
            idle.append(worker)
            return
