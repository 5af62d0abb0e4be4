"""Shared fixtures: one real smoke run of the series, reused by every stage's tests.

`smoke_root` runs 00 and 01; `smoke_series` adds 02 -> 03 -> 04 -> 05 -> 06, so 05 to 08
are tested on what the stages before them actually wrote. Each is built once per test
session, whatever the number of parallel workers (`built`), and each worker works on a
copy of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No host-speed measurement around the tests' many `synergy run` commands (about 5 s each;
# `runs.reference_step_ms`, tested on its own in test_config.py).
os.environ.setdefault("SYNERGY_HOST_SPEED", "0")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


# The order `make test` hands test files to its workers (pytest-xdist `--dist loadfile
# --no-loadscope-reorder`: the first file to the first worker, the second to the second, the
# third and fourth queued behind them, then each next file to whichever worker is free).
# The first worker builds the shared smoke series (`built`: about 130 s on a 2-core host)
# for the longest file; the second meanwhile runs files that need no smoke run or only its
# 00-01 (an image world of its own, bad inputs, the reliability cases, parallel trainings)
# instead of waiting for it; the longest of the rest follow, so no long file starts last
# while the other worker idles (`pytest --durations=0`, 2026-12-07). Files not listed follow
# in their own order; a stale list costs only time.
FILE_ORDER = ("test_kills_training.py", "test_vlm_series.py", "test_bad_inputs.py",
                 "test_reliability3.py", "test_parallel.py", "test_strategies.py",
                 "test_kills.py", "test_report.py", "test_workbench.py", "test_scale.py",
                 "test_reuse.py")


def pytest_collection_modifyitems(items):
    """Everything that needs the trained smoke series is slow (`pytest -m "not slow"`);
    the files in `FILE_ORDER` first, in its order (a stable sort keeps each file's order)."""
    for item in items:
        if "smoke_series" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def run_stages(root: Path, *names: str, profile: Path = SMOKE, **overrides) -> None:
    """Execute stages' notebooks (papermill) on `profile` with output under `root`."""
    from synergy import pipeline

    for name in names:
        pipeline.run_stage(pipeline.find_stage(name), profile,
                           {"output_root": str(root), **overrides}, log_output=False)


def shared_folder(tmp_path_factory, worker_id: str) -> Path:
    """The folder every worker of this test session sees (the session's base folder)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@contextlib.contextmanager
def built(tmp_path_factory, worker_id: str, name: str, stage_names: tuple[str, ...] = (),
          base: str | None = None) -> Iterator[Path]:
    """An output root where `stage_names` ran on the smoke profile (on a copy of the root
    built as `base`), built once per test session and shared by its parallel workers
    (pytest-xdist's recipe for a session fixture run once): the first worker to ask builds
    it, the others wait, and each copies it while it holds the lock (`private_copy`). The
    lock is held while the block runs, so a test may move it away and back. Locks are
    taken in one order, a root before its base. A build that fails is not tried again:
    the other workers' tests that need it fail at once, with its error."""
    from filelock import FileLock

    shared = shared_folder(tmp_path_factory, worker_id)
    root, done = shared / f"built-{name}", shared / f"built-{name}.done"
    failed = shared / f"built-{name}.failed"
    with FileLock(str(shared / f"built-{name}.lock")):
        if failed.exists():  # another worker's build failed: fail at once, not build again
            pytest.fail(f"the shared smoke build {name!r} failed on another worker:\n"
                        f"{failed.read_text()}", pytrace=False)
        if not done.exists():
            if root.exists():  # a worker that built it was killed mid-build
                shutil.rmtree(root)
            try:
                if base is not None:
                    with built(tmp_path_factory, worker_id, base) as upstream:
                        shutil.copytree(upstream, root)
                run_stages(root, *stage_names)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}"[-5000:])
                raise
            done.touch()
        yield root


def private_copy(built_root: Path, root: Path) -> Path:
    """`root` made a copy of the shared `built_root`: every folder of it replaced whole, so
    what tests of this worker changed there before is gone."""
    for folder in built_root.iterdir():
        if (root / folder.name).exists():
            shutil.rmtree(root / folder.name)
        shutil.copytree(folder, root / folder.name)
    return root


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory, worker_id) -> Path:
    """An output root where 00_world and 01_stratify have run on the smoke profile."""
    with built(tmp_path_factory, worker_id, "root", ("00", "01")) as root:
        return private_copy(root, tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="session")
def smoke_series(smoke_root, tmp_path_factory, worker_id) -> Path:
    """The same root after 02 -> 03 -> 04 -> 05 -> 06 ran on it (real SFT, GRPO, strategies
    and merges)."""
    with built(tmp_path_factory, worker_id, "series", ("02", "03", "04", "05", "06"),
               base="root") as root:
        return private_copy(root, smoke_root)


@pytest.fixture(scope="session")
def smoke_world(smoke_root):
    """(WorldConfig, model folder) of the smoke run."""
    from synergy import world
    from synergy.runs import Run

    return world.config_of(Run(smoke_root, "smoke")), world.load(str(smoke_root),
                                                                  "smoke").model_path


def perturbed_copy(src: Path, dst: Path, seed: int, scale: float = 0.05) -> Path:
    """TEST HELPER: save `src` with deterministic noise (scale x each tensor's std) added."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().clamp_min(1e-3))
    model.save_pretrained(dst, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def one_thread():
    """Two torch threads on two busy cores are many times slower than one."""
    from synergy.runs import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def smoke_engine(smoke_world):
    """A sampling engine on the smoke world's base model."""
    from synergy.generation import HFEngine

    return HFEngine.from_path(smoke_world[1], device="cpu")
