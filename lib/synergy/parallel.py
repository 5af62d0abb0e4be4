"""Independent trainings of a stage side by side, each in a process of its own (CPU only).

`run.train_jobs` says how many trainings a stage (04's policies, 05's models) runs at once:
1 (every profile's value) one after another in the stage's own process; N > 1 that many
spawned processes sharing the stage's torch threads; 0 one per thread, at most the
trainings. It is for a CPU with more threads than a tiny model's step can use. On this
project's 2-core host two threads already use both cores well (a tiny-profile GRPO step took
1.04 s at 2 threads and 1.6-1.9 s at one thread beside another training; sampling 2,048
rollouts was 1.5-1.7x faster at 2 threads than at 1), and two policies side by side took
1.02-1.11x the time of the same two one after another (`bench/side_by_side.py`: ratios
0.90x and 0.98x), so no profile sets it.

Each training is the same function with the same arguments either way: seeded by its own
arguments, written to its own folder, resumed from its own checkpoints and reused by its own
content key. What may differ with the thread count is the last bits of float sums, as
between machines. With CUDA, or inside a multi-process launch, trainings run one at a time.

A job's function is imported by name in the worker (a module-level function) and takes
`reuse_only=True`: then it returns its finished result, or None, without training. The
starting process asks that first, so a stage whose trainings are all done starts no worker.
Its workers' progress bars are drawn by the starting process (`progress.relay_to`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
from typing import Any, Callable

from synergy import quiet_libraries
from synergy.progress import Relayed, relay_to
from synergy.training import world_size

POLL_S = 0.25  # how often the starting process draws relayed bars and checks for results


@dataclasses.dataclass(frozen=True)
class From:
    """A job argument that is another job's result (its `key` entry): the job starts when
    that one has finished (the hybrid's GRPO from its warm-up)."""

    job: str
    key: str | None = None


@dataclasses.dataclass
class Job:
    name: str                        # shown, and what `From` names
    fn: Callable[..., Any]           # module-level; fn(**kwargs, reuse_only=...)
    kwargs: dict[str, Any]           # picklable values, or `From`


class TrainingFailed(RuntimeError):
    """A training of a side-by-side group failed; the others ran to their end first."""


def workers_for(setting: int, n_jobs: int, threads: int) -> int:
    """How many trainings run at once: `setting` when > 0, else one per torch thread; never
    more than the jobs; 1 with CUDA or inside a multi-process launch."""
    import torch

    if torch.cuda.is_available() or world_size() > 1:
        return 1
    return max(1, min(n_jobs, setting if setting > 0 else threads))


def _start_worker(queue, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    quiet_libraries()  # as in the stage's own process: no per-file bars of loads and saves
    relay_to(queue)
    queue.cancel_join_thread()  # leaving never waits on bar states nobody will read


def run(jobs: list[Job], setting: int, progress: bool = True) -> dict[str, Any]:
    """Each job's result by name: one after another here when one worker is chosen
    (`workers_for`), else side by side in that many spawned processes sharing this process's
    torch threads, in the jobs' order as their `From` arguments allow.

    A failing training lets the others finish (their work is kept either way) and is then
    raised as `TrainingFailed` naming it; an interruption (a kernel interrupt, Ctrl-C) stops
    the workers, and each training resumes from its last checkpoint when the stage runs
    again."""
    import torch

    threads = torch.get_num_threads()
    workers = workers_for(setting, len(jobs), threads)
    results: dict[str, Any] = {}

    def arguments(job: Job) -> dict[str, Any]:
        return {k: (results[v.job] if v.key is None else results[v.job][v.key])
                if isinstance(v, From) else v for k, v in job.kwargs.items()}

    if workers == 1:
        for job in jobs:
            if progress:
                print(f"training {job.name}", flush=True)
            results[job.name] = job.fn(**arguments(job))
        return results

    each = max(1, threads // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    queue = context.Queue()
    relayed = Relayed(queue)
    pool = None
    pending, running, failed = list(jobs), {}, {}
    try:
        while pending or running:
            started = len(pending)
            for job in list(pending):
                deps = {v.job for v in job.kwargs.values() if isinstance(v, From)}
                if deps & set(failed):
                    pending.remove(job)
                    failed[job.name] = TrainingFailed(
                        f"{job.name} was not trained: it starts from "
                        f"{sorted(deps & set(failed))}, which failed")
                    continue
                if len(running) >= workers or not deps <= set(results):
                    continue
                pending.remove(job)
                kwargs = arguments(job)
                done = job.fn(**kwargs, reuse_only=True)
                if done is not None:
                    results[job.name] = done
                    if progress:
                        print(f"{job.name}: reused (trained before, same key)", flush=True)
                    continue
                if pool is None:
                    pool = concurrent.futures.ProcessPoolExecutor(
                        workers, mp_context=context, initializer=_start_worker,
                        initargs=(queue, each))
                if progress:
                    print(f"training {job.name} (side by side: {workers} at a time, "
                          f"{each} thread(s) each; run.train_jobs)", flush=True)
                running[pool.submit(job.fn, **kwargs)] = job
            if not running:
                if pending and len(pending) == started:
                    raise ValueError(f"jobs {[j.name for j in pending]} wait on results "
                                     "no job gives")
                continue
            relayed.pump(POLL_S)
            for future in [f for f in running if f.done()]:
                job = running.pop(future)
                try:
                    results[job.name] = future.result()
                except concurrent.futures.process.BrokenProcessPool as exc:
                    raise TrainingFailed(
                        f"the process training {job.name} died ({exc}): what it saved (a "
                        "checkpoint every save_steps) is kept; run the stage again to resume"
                    ) from exc
                except Exception as exc:  # noqa: BLE001 - raised below, once all are done
                    failed[job.name] = exc
        relayed.pump()
    except BaseException:
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        relayed.close()
        queue.close()
    if failed:
        name, exc = next(iter(failed.items()))
        raise TrainingFailed(f"training {name} failed: {type(exc).__name__}: {exc}"
                             + (f" (also failed: {list(failed)[1:]})" if len(failed) > 1
                                else "")) from exc
    return {job.name: results[job.name] for job in jobs}
