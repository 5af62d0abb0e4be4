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
"""

from __future__ import annotations

import io
import os
import sys

MODE_VARIABLE = "SYNERGY_PROGRESS"
MODES = ("widgets", "terminal", "lines")
INTERVAL = float(os.environ.get("SYNERGY_PROGRESS_INTERVAL", 15))


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
        line = text.replace("\r", "").strip()
        if line:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar (same arguments) drawn as `mode()` says."""
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
