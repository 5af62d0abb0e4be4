"""Progress bars that suit where their output goes: one place for every bar of the series.

- In Jupyter (a notebook opened in Lab): tqdm's widget bar (ipywidgets).
- In a terminal: one line per bar, updated in place.
- Anywhere else (a pipe, a log file, or a kernel that `synergy run` executes through
  papermill, which streams each write as a new line): a plain line every `INTERVAL` seconds
  and one at the end, never a line per update.

`synergy run` sets `SYNERGY_PROGRESS=lines` for the kernels it starts (`pipeline`);
`SYNERGY_PROGRESS` may also be set by hand to `widgets`, `terminal` or `lines`.
Training stages give their TRL trainer `training_bar` (`show_training`): steps, loss and the
time left, in place of the trainer's own bar and its printed log dictionaries.

A worker process of `parallel.run` (trainings side by side) draws no bar of its own:
`relay_to` makes `progress_bar` there send what its bars would show to the process that
started it, where `Relayed` draws each as a bar of this module.
"""

from __future__ import annotations

import io
import itertools
import os
import queue as queue_module
import sys
import time

MODE_VARIABLE = "SYNERGY_PROGRESS"
MODES = ("widgets", "terminal", "lines")
INTERVAL = float(os.environ.get("SYNERGY_PROGRESS_INTERVAL", 15))
CURSOR_UP = "\x1b[A"  # how tqdm reaches the row of a bar above


def mode() -> str:
    """Where bars go now: `SYNERGY_PROGRESS` if set, else widgets inside a Jupyter kernel,
    terminal when stderr is a terminal, lines otherwise."""
    chosen = os.environ.get(MODE_VARIABLE, "")
    if chosen in MODES:
        return chosen
    if "ipykernel" in sys.modules and _in_kernel():
        return "widgets"
    return "terminal" if sys.stderr.isatty() else "lines"


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _Lines(io.TextIOBase):
    """tqdm's output as whole lines: each refresh (a carriage return and the bar) becomes
    one line on stderr."""

    def write(self, text: str) -> int:
        # Bars open at once: tqdm moves between their rows (a newline, then cursor-up).
        for line in text.replace("\r", "").replace(CURSOR_UP, "").split("\n"):
            if line.strip():
                sys.stderr.write(line.strip() + "\n")
        sys.stderr.flush()
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar (same arguments) drawn as `mode()` says (relayed in a worker, `relay_to`)."""
    if _RELAY is not None:
        return _RelayBar(iterable, **kwargs)
    chosen = mode()
    if chosen == "widgets":
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    if chosen != "lines":
        return tqdm(iterable, **kwargs)

    class Periodic(tqdm):
        """At most a line per `INTERVAL` seconds, even when the caller refreshes (the
        first line and the last, from `close`, always). The gate keeps its own clock:
        tqdm's `last_print_t` is the iterator's bookkeeping, and moving it from here made
        an iterated bar whose caller refreshes (`set_postfix`) count steps twice."""

        def refresh(self, *args, **kw):
            if self.disable:
                return super().refresh(*args, **kw)
            now, last = self._time(), getattr(self, "_line_t", None)
            if last is not None and now - last < self.mininterval:
                return False
            self._line_t = now
            return super().refresh(*args, **kw)

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            """An iterated bar's own count is synced only when the iterator draws, so a
            refresh from the caller would print a stale count with a fresh time ("365/600
            [01:46" after "365/600 [01:30"): the postfix waits for the iterator's line."""
            return super().set_postfix(ordered_dict, refresh=refresh and self.iterable is None,
                                       **kwargs)

    return Periodic(iterable, **{**kwargs, "file": _Lines(), "mininterval": INTERVAL,
                                 "ascii": True, "ncols": 100, "dynamic_ncols": False})


def training_bar(label: str):
    """A TrainerCallback showing one training run as a bar: optimizer steps, the latest
    loss (and reward, for GRPO) and the time left."""
    from transformers import TrainerCallback

    class TrainingBar(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = progress_bar(total=state.max_steps, initial=state.global_step,
                               desc=f"training {label}", unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            shown = {k: logs[k] for k in ("loss", "reward") if isinstance(logs.get(k),
                                                                         (int, float))}
            if shown:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainingBar()


def show_training(trainer, label: str, enabled: bool = True):
    """Replace a transformers Trainer's own progress output (its tqdm bar, or the log
    dictionaries it prints without one) by `training_bar`, or by nothing when not
    `enabled`. Returns the trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if enabled:
        trainer.add_callback(training_bar(label))
    return trainer


# --- bars of worker processes -------------------------------------------------------------

_RELAY = None  # the queue a worker process sends its bars' states to (`relay_to`)
_BAR_IDS = itertools.count()


def relay_to(queue) -> None:
    """In a worker process: every `progress_bar` from now on sends its state to `queue`
    (a multiprocessing queue the starting process reads with `Relayed`)."""
    global _RELAY
    _RELAY = queue


class _RelayBar:
    """What a tqdm bar would show (count, total, postfix), sent to the starting process at
    most every `SEND_INTERVAL` seconds and whenever it opens, refreshes or closes. Takes the
    tqdm arguments and methods the series uses."""

    SEND_INTERVAL = 0.5

    def __init__(self, iterable=None, total=None, initial=0, desc="", unit="it",
                 disable=False, **_ignored):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.disable, self.n, self._total = iterable, disable, initial, total
        self.postfix: dict[str, str] = {}
        self.id, self._sent = (os.getpid(), next(_BAR_IDS)), 0.0
        self._send("open", force=True, desc=desc, unit=unit, initial=initial)

    @property
    def total(self):
        return self._total

    @total.setter
    def total(self, value) -> None:
        self._total = value
        self._send("update")

    def update(self, n: int = 1) -> None:
        self.n += n
        self._send("update")

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {str(k): str(v) for k, v in {**(ordered_dict or {}), **kwargs}.items()}
        self._send("update", force=refresh)

    def refresh(self, *args, **kwargs) -> None:
        self._send("update", force=True)

    def close(self) -> None:
        self._send("close", force=True)
        self.disable = True  # nothing more after the last state

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def _send(self, kind: str, force: bool = False, **extra) -> None:
        now = time.monotonic()
        if self.disable or (not force and now - self._sent < self.SEND_INTERVAL):
            return
        self._sent = now
        _RELAY.put((kind, self.id, {"n": self.n, "total": self._total,
                                    "postfix": dict(self.postfix), **extra}))


class Relayed:
    """Draws the bars worker processes relay to `queue` (`relay_to`), one bar of this module
    per bar there; `pump` reads what has arrived, `close` closes what is left open."""

    def __init__(self, queue):
        self.queue, self.bars = queue, {}

    def pump(self, timeout: float = 0.0) -> None:
        """Draw every state that arrives within `timeout` seconds (then all that is queued)."""
        try:
            message = self.queue.get(timeout=timeout) if timeout > 0 else \
                self.queue.get_nowait()
        except queue_module.Empty:
            return
        while True:
            self._draw(*message)
            try:
                message = self.queue.get_nowait()
            except queue_module.Empty:
                return

    def _draw(self, kind: str, bar_id, state: dict) -> None:
        if kind == "open":
            self.bars[bar_id] = progress_bar(total=state["total"], initial=state["initial"],
                                             desc=state["desc"], unit=state["unit"])
        bar = self.bars.get(bar_id)
        if bar is None:
            return
        if state["total"] != bar.total:
            bar.total = state["total"]
        if state["postfix"]:
            bar.set_postfix(state["postfix"], refresh=False)
        bar.update(state["n"] - bar.n)
        if kind == "close":
            self.bars.pop(bar_id).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
