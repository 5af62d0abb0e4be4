"""Run the notebook series with papermill and render each executed notebook to HTML.

Every stage's parameters are validated against its config *and* the notebook's parameters
cell before anything runs (papermill would only warn about an unknown parameter). An error
inside a notebook becomes a `StageFailed`: one line naming the stage and the cause, and the
executed notebook kept as `<stage>.failed.ipynb` beside the stage's outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from synergy import progress, runs, stages
from synergy.config import (PROFILE_PARAMETER, ConfigError, load_profile, output_root_problem,
                            profile_section)
from synergy.files import atomic_path, write_text
from synergy.runs import (EXECUTED_BY_RUNNER, EXECUTED_BY_VARIABLE, MANIFEST, Run, StageBusy,
                          busy_message, lock_holder, stage_lock)
from synergy.stages import Stage

STAGES = stages.STAGES
find_stage = stages.find


class StageFailed(RuntimeError):
    """A stage's notebook raised: the stage, the cause in one line, the executed notebook."""

    def __init__(self, stage: Stage, cause: str, notebook: Path | None):
        self.stage, self.cause, self.notebook = stage, cause, notebook
        super().__init__(f"{stage.name}: {cause}")


# The kernel's own log stays quiet: on Ctrl-C it would print a 20-line zmq traceback of its
# shutdown (user code's errors reach the notebook and `StageFailed`, not this log).
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]

# Our own errors already name the key or file; the class name would only add noise.
_PLAIN_ERRORS = ("ConfigError", "ArtifactError", "StageBusy")


def one_line(ename: str, evalue: str, limit: int = 600) -> str:
    """An exception as one line: its message (with its class unless it is ours)."""
    text = " ".join(str(evalue).split())
    text = text if ename in _PLAIN_ERRORS else (f"{ename}: {text}" if text else ename)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def notebook_parameters(path: Path) -> dict[str, Any]:
    import papermill

    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def check_notebook_matches(stage: Stage) -> None:
    """The parameters cell must hold exactly the config's keys."""
    declared = set(notebook_parameters(stage.notebook)) - {PROFILE_PARAMETER}
    expected = set(stage.config.keys())
    if declared != expected:
        raise ConfigError(
            f"{stage.notebook.name}: parameters cell does not match config "
            f"'{stage.config.SECTION}': missing {sorted(expected - declared)}, "
            f"unknown {sorted(declared - expected)}")


# plotly's notebook renderer loads MathJax 3 from a CDN in every figure (our figures have no
# LaTeX); the page works offline without it, and nbconvert's template has its own.
PLOTLY_MATHJAX = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/3'
                            r'[^"]*"></script>')


def render_html(notebook: Path, html: Path, show_code: bool = False) -> Path:
    """The executed notebook as one self-contained page to share (plotly.js inlined once,
    no CDN): by default its narrative and outputs only, without code, parameter cells,
    prompts or stderr (progress bars and warnings stay in the .ipynb); with `show_code`,
    the code too. Never papermill's injected cell: its `output_root` is a path on the
    machine that ran the stage, and the manifest records the parameters."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    hide = not show_code
    body, _ = HTMLExporter(exclude_input=hide, exclude_input_prompt=hide,
                           exclude_output_prompt=hide).from_notebook_node(nb)
    return write_text(html, PLOTLY_MATHJAX.sub("", body))


def kernel_config():
    """The kernel manager's settings for papermill: CurveZMQ keys for the kernel's local
    TCP channels where pyzmq supports them. Without keys, ipykernel (>= 7) warns on every
    start that the kernel "is running over TCP without encryption"."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {
        "transport_encryption": "auto" if zmq.has("curve") else "disabled"}})


def streams(log_output: bool) -> dict[str, Any]:
    """papermill's options to pass the kernel's stdout and stderr through as written (its
    `log_output` logs each write as a line of its own, with a blank line after each)."""
    return {"stdout_file": sys.stdout, "stderr_file": sys.stderr} if log_output else {}


@contextlib.contextmanager
def kernel_environment():
    """The kernel papermill starts inherits this process's environment: its progress bars
    print plain periodic lines (papermill streams each write of a bar as a new line), and
    its manifest records that the runner executed it (`runs.EXECUTED_BY_VARIABLE`)."""
    settings = {progress.MODE_VARIABLE: os.environ.get(progress.MODE_VARIABLE, "lines"),
                EXECUTED_BY_VARIABLE: EXECUTED_BY_RUNNER}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_output_root(cfg) -> None:
    """The run's folder can be made and written (else a ConfigError naming the key)."""
    problem = output_root_problem(cfg.output_root, cfg.run_name)
    if problem:
        raise ConfigError(f"run.output_root: {problem}")


def run_stage(stage: Stage, profile: str | Path, overrides: dict[str, Any] | None = None,
              log_output: bool = True, show_code: bool = False) -> Path:
    """Execute one stage's notebook on a profile; returns the executed notebook's path."""
    import papermill

    values = {**profile_section(load_profile(profile), stage.config.SECTION, profile),
              **(overrides or {})}
    cfg = stage.config.from_mapping(values, str(profile))
    check_notebook_matches(stage)
    out_dir = Run.of(cfg).dir(stage)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{stage.name}.ipynb"
    t0 = time.perf_counter()
    failed = out_dir / f"{stage.name}.failed.ipynb"
    with stage_lock(out_dir), atomic_path(executed) as tmp:  # the kernel shares the lock
        try:
            with kernel_environment():
                papermill.execute_notebook(
                    str(stage.notebook), str(tmp), parameters=cfg.to_dict(),
                    cwd=str(stage.notebook.parent), kernel_name="python3", progress_bar=False,
                    config=kernel_config(), extra_arguments=KERNEL_ARGS,
                    **streams(log_output))
        except Exception as exc:  # PapermillExecutionError, DeadKernelError, ...
            # Failed after its results (a later cell, a full disk): not done.
            (out_dir / MANIFEST).unlink(missing_ok=True)
            cause = one_line(getattr(exc, "ename", type(exc).__name__),
                             getattr(exc, "evalue", str(exc)))
            kept, problem = keep_failed(tmp, failed)
            raise StageFailed(stage, cause + problem, kept) from None
        except BaseException:  # Ctrl-C: the stage is not done either
            (out_dir / MANIFEST).unlink(missing_ok=True)
            raise
    failed.unlink(missing_ok=True)
    render_html(executed, out_dir / f"{stage.name}.html", show_code)
    print(f"[synergy] {stage.name}: {time.perf_counter() - t0:.1f}s -> "
          f"{out_dir / (stage.name + '.html')}", flush=True)
    return executed


def keep_failed(tmp: Path, failed: Path) -> tuple[Path | None, str]:
    """Keep the notebook papermill saved with the error as `failed` (renamed whole: never a
    truncated file). Returns (its path or None, "" or why it could not be kept)."""
    if not tmp.exists():
        return None, "; the executed notebook was not written"
    try:
        json.loads(tmp.read_text())
        os.replace(tmp, failed)
    except (OSError, ValueError) as exc:  # cut short by a full disk, or not renamed
        failed.unlink(missing_ok=True)  # an older one would describe another execution
        return None, (f"; the executed notebook could not be written to {failed} "
                      f"({' '.join(str(exc).split())[:200]})")
    return failed, ""


def time_table(seconds: dict[str, float],
               speeds: tuple[float | None, float | None] | None = None) -> str:
    """Each stage's wall time and share of the total, as printed at the end of a series;
    with `speeds`, the host's speed before and after it (`runs.reference_step_ms`)."""
    total = sum(seconds.values()) or 1.0
    rows = [f"  {name:<20} {secs:8.1f} s  {100 * secs / total:5.1f}%"
            for name, secs in seconds.items()]
    lines = ["[synergy] stage times:", *rows,
             f"  {'total':<20} {sum(seconds.values()):8.1f} s  100.0%"]
    if speeds and None not in speeds:
        lines.append(f"  host speed: a reference training step took {speeds[0]:.0f} ms before, "
                     f"{speeds[1]:.0f} ms after")
    return "\n".join(lines)


def host_speed(threads: int) -> float | None:
    """`runs.reference_step_ms`, printed: the host's speed as a series starts (CPU only)."""
    speed = runs.reference_step_ms(threads)
    if speed is not None:
        print(f"[synergy] host speed: a reference training step takes {speed:.0f} ms (a "
              "transformer of the world's size; read the stage times with it)", flush=True)
    return speed


def run_series(profile: str | Path, names: list[str] | None = None,
               overrides: dict[str, Any] | None = None, log_output: bool = True,
               show_code: bool = False) -> list[Path]:
    chosen = [find_stage(s) for s in names] if names else STAGES
    for stage in chosen:  # fail on any parameter problem before the first long stage
        check_notebook_matches(stage)
        values = {**profile_section(load_profile(profile), stage.config.SECTION, profile),
                  **(overrides or {})}
        cfg = stage.config.from_mapping(values, str(profile))
        check_output_root(cfg)
        folder = Run.of(cfg).dir(stage)
        holder = lock_holder(folder)
        if holder is not None:  # another process works on this stage: stop before any work
            raise StageBusy(busy_message(folder, holder))
    paths, seconds = [], {}
    before = host_speed(cfg.threads)
    for stage in chosen:
        t0 = time.perf_counter()
        paths.append(run_stage(stage, profile, overrides, log_output, show_code))
        seconds[stage.name] = time.perf_counter() - t0
    print(time_table(seconds, (before, runs.reference_step_ms(cfg.threads))), flush=True)
    return paths
