"""Reliability, round 3 (issue 21): one process per stage, bounded inputs, endpoints that fail
fast, no half-finished stage taken as done, one line for every error before a stage starts.

One table of cases by class (`CASES`, each a function below): real processes where the fault
is about processes (a lock holder, a second `python -m synergy`, Ctrl-C), the fake endpoint
(tests/fake_openai.py) for hanging, failing and malformed answers. A full disk is simulated at
the write helper (`files.atomic_path`'s writes raise ENOSPC): a tmpfs or quota needs
privileges CI does not have. Two cases execute a notebook (a tiny 00_world); the rest take
well under a second each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SMOKE
from fake_openai import FakeOpenAI
from PIL import Image
from synergy import __main__ as cli
from synergy import data, files, judge, pipeline, row_rules, runs, stages
from synergy.config import ConfigError
from synergy.files import ArtifactError

# A tiny world: the two cases that execute 00_world take seconds.
TINY_WORLD = {"train_steps": 2, "warmup_steps": 0, "log_every": 1}
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}


# --- helpers --------------------------------------------------------------------------------

def profile(tmp_path: Path, **run_keys) -> Path:
    """The smoke profile with its output root (and any `run` key) set under tmp_path."""
    p = yaml.safe_load(SMOKE.read_text())
    p["run"].update({"output_root": str(tmp_path / "outputs"), **run_keys})
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def synergy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synergy", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def cli_lines(capsys, *argv: str) -> tuple[int, list[str]]:
    """`python -m synergy` in this process: exit code and stderr lines."""
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


HOLD = """
import sys, time
from synergy.runs import stage_lock
with stage_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


class Holder:
    """A second process holding a stage folder's lock (`runs.stage_lock`) until stopped."""

    def __init__(self, folder: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=ENV,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def held(tmp_path):
    """(profile, stratify folder, holder process): 01_stratify of run 'smoke' is locked."""
    prof = profile(tmp_path)
    folder = tmp_path / "outputs" / "smoke" / "01_stratify"
    holder = Holder(folder)
    yield prof, folder, holder
    holder.stop()


def one_line_busy(line: str, folder: Path, pid: int) -> None:
    assert line.startswith(f"synergy: {folder}: in use by pid {pid} since "), line
    assert "HOLD" not in line and f"remove {folder / runs.LOCK}" in line, line


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / runs.LOCK
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "started": "2026-01-01T00:00:00+00:00", "command": "x",
                                **fields}))
    return lock


# --- one process per stage ------------------------------------------------------------------

def lock_stops_a_second_run(tmp_path, capsys, held):
    """`synergy run` of a stage another process works on: exit 2 before any work, one line
    naming the holder's pid and command, and how to clear a stale lock."""
    prof, folder, holder = held
    done = synergy("run", "--profile", str(prof), "--stages", "01", "--quiet")
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1, err
    one_line_busy(err[0], folder, holder.proc.pid)
    assert f"({sys.executable} -c " in err[0]  # the holder's command
    assert not (folder / "manifest.json").exists()


def lock_stops_a_kernel(tmp_path, capsys, held):
    """A notebook run in JupyterLab (the stage's `run` in a plain process) while another
    process works on the stage: StageBusy before anything is touched."""
    prof, folder, holder = held
    cfg = stages.STRATIFY.config.from_profile(prof)
    (folder / "manifest.json").write_text("{}")  # the holder's result, not to be removed
    with pytest.raises(runs.StageBusy, match=f"in use by pid {holder.proc.pid}"):
        with runs.stage_run(cfg, stages.STRATIFY):
            raise AssertionError("the stage ran")
    assert (folder / "manifest.json").exists()


def lock_stops_a_second_training(tmp_path, capsys, held):
    """`synergy train` (an accelerate launch) of a stage another process trains: exit 2,
    nothing trained, so nothing sealed that another process trained."""
    prof, folder, holder = held
    sft = tmp_path / "outputs" / "smoke" / "03_sft"
    other = Holder(sft)
    try:
        done = synergy("train", "sft", "--profile", str(prof), "--quiet")
    finally:
        other.stop()
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1, err
    one_line_busy(err[0], sft, other.proc.pid)
    assert not (sft / "train").exists()


def lock_released_after_the_holder_ends(tmp_path, capsys, held):
    """The lock is the holder's only while it lives: once it ends, the stage is free."""
    prof, folder, holder = held
    assert runs.lock_holder(folder)["pid"] == holder.proc.pid
    holder.stop()
    assert runs.lock_holder(folder) is None
    with runs.stage_lock(folder):
        assert json.loads((folder / runs.LOCK).read_text())["pid"] == os.getpid()
    assert not (folder / runs.LOCK).exists()


def stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "s"
    write_lock(folder, pid=dead_pid())
    assert runs.lock_holder(folder) is None
    with runs.stage_lock(folder):
        assert json.loads((folder / runs.LOCK).read_text())["pid"] == os.getpid()
    assert not (folder / runs.LOCK).exists()


def stale_lock_of_a_reused_pid_is_taken_over(tmp_path, capsys):
    """A live pid that started after the lock was written is another process."""
    folder = tmp_path / "s"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lock(folder, pid=sleeper.pid, pid_start="1")
        assert runs.lock_holder(folder) is None
        write_lock(folder, pid=sleeper.pid, pid_start=runs._start_time(sleeper.pid))
        assert runs.lock_holder(folder)["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def lock_cut_short_by_a_kill_is_stale(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / runs.LOCK).write_text('{"pid": 12')
    with runs.stage_lock(folder):
        assert json.loads((folder / runs.LOCK).read_text())["pid"] == os.getpid()


def lock_of_another_host_is_never_taken(tmp_path, capsys):
    """Pid liveness says nothing about another machine's process: stop, say how to clear."""
    folder = tmp_path / "s"
    write_lock(folder, pid=dead_pid(), host="gpu-node-7")
    with pytest.raises(runs.StageBusy, match=r"on host gpu-node-7 .*remove .*\.lock"):
        with runs.stage_lock(folder):
            pass
    assert (folder / runs.LOCK).exists()


def lock_is_shared_with_child_processes(tmp_path, capsys):
    """The runner holds the lock; its kernel (a child) works under it."""
    folder = tmp_path / "s"
    with runs.stage_lock(folder):
        child = subprocess.run([sys.executable, "-c", HOLD.replace("120", "0"), str(folder)],
                               env=ENV, capture_output=True, text=True, timeout=60)
        assert child.returncode == 0 and "held" in child.stdout, child.stderr
        assert (folder / runs.LOCK).exists()  # still the runner's
    assert not (folder / runs.LOCK).exists()


# --- a failed stage is never taken as done ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EditedStage(stages.Stage):
    """A stage whose notebook is an edited copy (a user's cell added at the end)."""
    edited: Path | None = None

    @property
    def notebook(self) -> Path:
        return self.edited


def failed_after_results_leaves_no_manifest(tmp_path, capsys):
    """An error in a cell after the stage wrote its results and manifest (a user's edit):
    the manifest is removed, later stages see the stage as not run, and the executed
    notebook is kept whole as .failed.ipynb."""
    import nbformat

    nb = nbformat.read(stages.WORLD.notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('a cell a user added')"))
    edited = tmp_path / "00_world.ipynb"
    nbformat.write(nb, edited)
    stage = EditedStage(**{f.name: getattr(stages.WORLD, f.name)
                           for f in dataclasses.fields(stages.Stage)}, edited=edited)
    out = tmp_path / "outputs"
    with pytest.raises(pipeline.StageFailed, match="ValueError: a cell a user added") as exc:
        pipeline.run_stage(stage, SMOKE, {"output_root": str(out), **TINY_WORLD},
                           log_output=False)
    folder = out / "smoke" / "00_world"
    assert (folder / "model").is_dir()  # the results were written ...
    assert not (folder / "manifest.json").exists()  # ... but the stage is not done
    assert not runs.Run(out, "smoke").has_run(stages.WORLD)
    assert exc.value.notebook == folder / "00_world.failed.ipynb"
    assert nbformat.read(exc.value.notebook, as_version=4).cells[-1].outputs  # whole
    assert not (folder / runs.LOCK).exists()


def failed_notebook_cut_short_is_not_kept(tmp_path, capsys):
    """A disk that fills while papermill writes the executed notebook: no truncated
    .failed.ipynb (an older one goes too); the error says it could not be written."""
    tmp, failed = tmp_path / "t" / "s.ipynb", tmp_path / "s.failed.ipynb"
    tmp.parent.mkdir()
    tmp.write_text('{"cells": [{"cell_type": "code", "sou')
    failed.write_text("{}")  # from an earlier execution
    kept, problem = pipeline.keep_failed(tmp, failed)
    assert kept is None and not failed.exists()
    assert problem.startswith(f"; the executed notebook could not be written to {failed} (")


def failed_notebook_never_written_is_said(tmp_path, capsys):
    kept, problem = pipeline.keep_failed(tmp_path / "none.ipynb", tmp_path / "f.ipynb")
    assert kept is None and problem == "; the executed notebook was not written"


def ctrl_c_prints_one_line(tmp_path, capsys):
    """Ctrl-C (SIGINT to the runner's process group) mid-stage: exit 130, the resume line
    only (no zmq traceback of the kernel's shutdown), no manifest, no lock left."""
    prof = profile(tmp_path)
    p = yaml.safe_load(prof.read_text())
    p["world"].update(TINY_WORLD)
    prof.write_text(yaml.safe_dump(p))
    folder = tmp_path / "outputs" / "smoke" / "00_world"
    proc = subprocess.Popen([sys.executable, "-m", "synergy", "run", "--profile", str(prof),
                             "--stages", "00", "--quiet"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    t0 = time.perf_counter()
    # Interrupt once the kernel runs the stage (its lock file is the kernel's runner's).
    while not list(folder.glob(".00_world.ipynb.tmp-*/00_world.ipynb")):
        assert proc.poll() is None and time.perf_counter() - t0 < 90, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines == ["synergy: interrupted; the same command resumes where it stopped"], err
    assert not (folder / "manifest.json").exists()
    assert not (folder / runs.LOCK).exists()


# --- a full disk names the path ---------------------------------------------------------------

def no_space(monkeypatch, method: str = "write_text"):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(Path, method, full)


def disk_full_names_the_file(tmp_path, capsys):
    target = tmp_path / "run" / "stage" / "table.csv"
    with pytest.MonkeyPatch.context() as mp:
        no_space(mp)
        with pytest.raises(OSError) as exc:
            files.write_text(target, "x")
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(target)
    assert str(exc.value) == (f"[Errno 28] No space left on device; could not write: "
                              f"'{target}'")
    assert list(target.parent.iterdir()) == []  # no temporary folder left


def disk_full_at_rename_names_the_file(tmp_path, capsys):
    target = tmp_path / "manifest.json"
    with pytest.MonkeyPatch.context() as mp:
        def full(src, dst):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        mp.setattr(files.os, "replace", full)
        with pytest.raises(OSError, match=f"Disk quota exceeded; could not write: '{target}'"):
            files.write_json(target, {"a": 1})


def disk_full_in_the_runner_is_one_line(tmp_path, capsys):
    """An OSError the runner meets (the HTML of a finished notebook on a full disk): one
    line naming the path, exit 1."""
    target = tmp_path / "outputs" / "smoke" / "00_world" / "00_world.html"

    def series(*args, **kwargs):
        files.write_text(target, "<html>")

    prof = profile(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        no_space(mp)
        mp.setattr(pipeline, "run_series", series)
        rc, err = cli_lines(capsys, "run", "--profile", str(prof), "--quiet")
    assert rc == 1 and err == [f"synergy: [Errno 28] No space left on device; could not "
                               f"write: '{target}'"], err


# --- one line for every error before a stage starts --------------------------------------------

def bad_run_name(name: str, cause: str):
    def case(tmp_path, capsys):
        rc, err = cli_lines(capsys, "run", "--profile", str(profile(tmp_path)), "--stages",
                            "00", "--run-name", name, "--quiet")
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith("synergy: ") and "run.run_name: " in err[0], err
        assert cause in err[0], err
        assert not (tmp_path / "outputs").exists()
    case.__doc__ = f"run name {name[:20]!r}: exit 2, one line"
    case.__name__ = f"run_name_{cause.split()[2 if 'control' in cause else 1]}_{len(name)}"
    return case


def output_root_is_a_file(tmp_path, capsys):
    (tmp_path / "outputs").write_text("not a folder")
    rc, err = cli_lines(capsys, "run", "--profile", str(profile(tmp_path)), "--stages", "00")
    assert rc == 2 and err == [f"synergy: run.output_root: {tmp_path / 'outputs'} is a file, "
                               "not a folder"], err


def outputs_folder_read_only(tmp_path, capsys):
    """A read-only outputs folder (chmod where the tests do not run as root, who may write
    anywhere; as root the permission check itself is made to answer no)."""
    out = tmp_path / "outputs"
    out.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        if os.geteuid() == 0:
            real = os.access
            mp.setattr("synergy.config.os.access",
                       lambda p, mode: False if Path(p) == out else real(p, mode))
        else:
            out.chmod(0o500)
        try:
            rc, err = cli_lines(capsys, "run", "--profile", str(profile(tmp_path)),
                                "--stages", "00")
        finally:
            out.chmod(0o700)
    assert rc == 2 and err == [f"synergy: run.output_root: {out} is not writable (read-only, "
                               "or owned by another user)"], err


def model_path_symlink_loop(tmp_path, capsys):
    loop = tmp_path / "model"
    loop.symlink_to(tmp_path / "model")
    p = yaml.safe_load(profile(tmp_path).read_text())
    p["stratify"]["model"] = str(loop)
    prof = tmp_path / "loop.yaml"
    prof.write_text(yaml.safe_dump(p))
    rc, err = cli_lines(capsys, "run", "--profile", str(prof), "--stages", "01")
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"synergy: {prof}: stratify.model: {loop}: symlink loop ("), err


def endpoint_keys_checked(tmp_path, capsys):
    p = yaml.safe_load(profile(tmp_path).read_text())
    p["distill"]["api_timeout"] = 0
    prof = tmp_path / "bad.yaml"
    prof.write_text(yaml.safe_dump(p))
    rc, err = cli_lines(capsys, "run", "--profile", str(prof), "--stages", "02")
    assert rc == 2 and err == [f"synergy: {prof}: distill.api_timeout: must be > 0 seconds, "
                               "got 0.0"], err


# --- endpoints that fail fast --------------------------------------------------------------------

def ask(server, tmp_path, n=4, **settings):
    client = judge.Client(judge.Endpoint(server.url, "m", "SYNERGY_TEST_KEY"),
                          tmp_path / "cache", **settings)
    requests = [([{"role": "user", "content": f"q{i}"}], {"max_tokens": 4}) for i in range(n)]
    return client, requests


def endpoint(reply, fn):
    def case(tmp_path, capsys):
        server = FakeOpenAI(reply)
        try:
            fn(server, tmp_path)
        finally:
            server.close()
    case.__doc__, case.__name__ = fn.__doc__, f"endpoint{fn.__name__}"
    return case


def _hanging(server, tmp_path):
    """A hanging endpoint fails after api_timeout, naming the endpoint and the cause."""
    client, requests = ask(server, tmp_path, timeout=0.3, retries=0, max_failures=1)
    t0 = time.perf_counter()
    with pytest.raises(judge.EndpointError) as exc:
        client.complete(requests)
    assert time.perf_counter() - t0 < 5
    assert str(exc.value).startswith(f"{server.url}#m: 1 failed attempts (api_max_failures=1); "
                                     "last: no answer within 0.3 s (api_timeout)"), exc.value


def _server_error(server, tmp_path):
    """HTTP 500 on every request: the failure budget stops the batch after a few attempts
    (not retries x requests, which took minutes)."""
    client, requests = ask(server, tmp_path, n=40, retries=2, max_failures=3, concurrency=2)
    t0 = time.perf_counter()
    with pytest.raises(judge.EndpointError, match=r"3 failed attempts .*last: HTTP 500: "):
        client.complete(requests)
    assert time.perf_counter() - t0 < 10
    assert len(server.requests) <= 3 + 2  # the budget, plus what was in flight


def _not_json(server, tmp_path):
    """A reply cut short: one line, the body's start, not a bare JSONDecodeError."""
    client, requests = ask(server, tmp_path, n=1, retries=0, max_failures=1)
    with pytest.raises(judge.EndpointError, match=r"HTTP 200 but the body is not JSON "
                                                  r"\(application/json\): \{\"id\": \"x\", \"cho"):
        client.complete(requests)


def _html_page(server, tmp_path):
    """A proxy's login page where the API should be."""
    client, requests = ask(server, tmp_path, n=1, retries=1, max_failures=5)
    with pytest.raises(judge.EndpointError, match=r"not JSON \(text/html\): <html><title>Sign in"):
        client.complete(requests)
    assert len(server.requests) == 2  # retried once


def _no_choices(server, tmp_path):
    client, requests = ask(server, tmp_path, n=1, retries=0, max_failures=1)
    with pytest.raises(judge.EndpointError, match=r"HTTP 200 but no choices in the reply"):
        client.complete(requests)


def flaky(body):
    """Answers q0..q5, then the server breaks (HTTP 503)."""
    n = int(body["messages"][0]["content"][1:])
    return {"content": f"a{n}"} if n < 6 else {"status": 503}


def _answers_kept_and_resumed(server, tmp_path):
    """A batch that fails keeps what was answered; the same call resumes from it and asks
    only what is missing; the key is in no file written."""
    os.environ["SYNERGY_TEST_KEY"] = "sk-secret-123"
    try:
        client, requests = ask(server, tmp_path, n=10, retries=0, max_failures=2, concurrency=1)
        with pytest.raises(judge.EndpointError):
            client.complete(requests)
        assert server.requests[0]["authorization"] == "Bearer sk-secret-123"
        asked = len(server.requests)
        server.reply = lambda body: {"content": "a" + body["messages"][0]["content"][1:]}
        again, _ = ask(server, tmp_path, n=10)
        answers = again.complete(requests)
        assert [a["text"] for a in answers] == [f"a{i}" for i in range(10)]
        assert again.cached == 6 and again.calls == 4
        assert len(server.requests) == asked + 4
        written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
        assert written and not any(b"sk-secret" in p.read_bytes() for p in written)
    finally:
        del os.environ["SYNERGY_TEST_KEY"]


def _progress_while_waiting(server, tmp_path):
    """A slow endpoint: a line says what is awaited while nothing arrives."""
    client, requests = ask(server, tmp_path, n=2, timeout=10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(judge, "PROGRESS_EVERY", 0.2)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            answers = client.complete(requests)
    assert [a["text"] for a in answers] == ["ok", "ok"]
    assert f"[synergy] {server.url}#m: waiting for answers (0/2 answered" in err.getvalue()


# --- bounded inputs ------------------------------------------------------------------------------

def benchmark(tmp_path: Path, bad: dict | None = None, n: int = 60) -> Path:
    """A MathVision-layout jsonl of `n` rows sharing one good image; `bad` ({row: image file
    name or ("question", text)}) makes some rows bad."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(images / "ok.png")
    rows = [{"id": str(i), "question": f"Area {i}? <image1>", "options": [],
             "image": "images/ok.png", "answer": str(i)} for i in range(n)]
    for i, spec in (bad or {}).items():
        if isinstance(spec, tuple):
            rows[i][spec[0]] = spec[1]
        else:
            rows[i]["image"] = f"images/{spec}"
    path = tmp_path / "mathvision.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def image_row(make, reason: str, limits=row_rules.Limits()):
    """One bad image in 60 rows (1.7%, under the 2% rule): the row is skipped, named with
    the file and the reason; the others load."""
    def case(tmp_path, capsys):
        (tmp_path / "images").mkdir()
        name = make(tmp_path / "images")
        table, _, skipped = data.load_named_benchmark(
            "mathvision", benchmark(tmp_path, {7: name}), limits=limits)
        assert len(table) == 59 and "7" not in set(table["qid"])
        assert skipped[["benchmark", "qid"]].values.tolist() == [["mathvision", "7"]]
        assert skipped["reason"][0].startswith(f"{name}: ") and reason in skipped["reason"][0], \
            skipped["reason"][0]
    case.__doc__, case.__name__ = f"image: {reason}", f"image{make.__name__}"
    return case


def _bomb(folder):
    # 1-bit, 3000 x 3000: a few kB on disk, 9M pixels decoded (the limit below is 1M).
    Image.new("1", (3000, 3000)).save(folder / "bomb.png")
    return "bomb.png"


def _zero(folder):
    (folder / "zero.png").write_bytes(b"")
    return "zero.png"


def _truncated(folder):
    Image.effect_noise((64, 64), 50).convert("RGB").save(folder / "cut.png")
    blob = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(blob[:len(blob) // 2])
    return "cut.png"


def _not_an_image(folder):
    (folder / "notes.png").write_text("not an image")
    return "notes.png"


def _pil_bomb(folder):
    # Beyond PIL's own bomb limit (which raises before our pixel count is asked).
    Image.new("1", (20000, 20000)).save(folder / "huge.png")
    return "huge.png"


def long_question_skipped(tmp_path, capsys):
    """A row of megabytes (its question): skipped by name before any work."""
    path = benchmark(tmp_path, {3: ("question", "x" * 2_000_000)})
    table, _, skipped = data.load_named_benchmark("mathvision", path)
    assert len(table) == 59
    assert skipped.values.tolist() == [["mathvision", "3", "question of 2,000,000 characters, "
                                        "above max_question_chars=20,000"]]


def too_many_bad_rows_fail_naming_them(tmp_path, capsys):
    """More than max_skipped_share of rows beyond the limits: the load fails, naming them."""
    (tmp_path / "images").mkdir()
    _zero(tmp_path / "images")
    path = benchmark(tmp_path, {1: "zero.png", 2: ("question", "y" * 30_000)})
    with pytest.raises(ArtifactError, match=r"2 of 60 rows skipped \(3\.3%\), above "
                                            r"max_skipped_share=2\.0%; first reasons: 1: zero\.png: "
                                            r"empty file \(0 bytes\); 2: question of 30,000"):
        data.load_named_benchmark("mathvision", path)


def limits_are_profile_keys(tmp_path, capsys):
    """The stratify keys reach the loader (a tighter question limit skips more)."""
    cfg = stages.STRATIFY.config.from_profile(SMOKE)
    assert (cfg.max_question_chars, cfg.max_image_pixels) == (row_rules.Limits().question_chars,
                                                              row_rules.Limits().image_pixels)
    path = benchmark(tmp_path)
    table, _, skipped = data.load_named_benchmark("mathvision", path, max_skipped_share=1.0,
                                                  limits=row_rules.Limits(question_chars=16))
    assert len(skipped) == 50 and set(table["qid"]) == {str(i) for i in range(10)}
    with pytest.raises(ConfigError, match="stratify.max_image_pixels: must be >= 1"):
        stages.STRATIFY.config.from_mapping({**cfg.to_dict(), "max_image_pixels": 0,
                                             "output_root": "outputs"}, "test")


def common_table_image_bounded(tmp_path, capsys):
    """A local table in the common schema: its images are checked too."""
    (tmp_path / "images").mkdir()
    _truncated(tmp_path / "images")
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "ok.png")
    rows = [{"qid": str(i), "question": "q", "answer": "1",
             "images": ["images/cut.png" if i == 0 else "images/ok.png"]} for i in range(60)]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = data.load_common(path)
    assert len(loaded.table) == 59 and loaded.skipped["qid"].tolist() == ["0"]
    assert loaded.skipped["reason"][0].startswith("cut.png: unreadable (")


# --- the table ------------------------------------------------------------------------------------

CASES = {
    "locks": [lock_stops_a_second_run, lock_stops_a_kernel, lock_stops_a_second_training,
              lock_released_after_the_holder_ends, stale_lock_of_a_dead_process_is_taken_over,
              stale_lock_of_a_reused_pid_is_taken_over, lock_cut_short_by_a_kill_is_stale,
              lock_of_another_host_is_never_taken, lock_is_shared_with_child_processes],
    "failed_stage": [failed_after_results_leaves_no_manifest, failed_notebook_cut_short_is_not_kept,
                     failed_notebook_never_written_is_said, ctrl_c_prints_one_line],
    "disk_full": [disk_full_names_the_file, disk_full_at_rename_names_the_file,
                  disk_full_in_the_runner_is_one_line],
    "before_a_stage": [
        bad_run_name("smoke\nrm -rf", "must not hold control characters (found '\\n'"),
        bad_run_name("sm\toke", "must not hold control characters (found '\\t'"),
        bad_run_name("smoke\x1b[31m", "must not hold control characters (found '\\x1b'"),
        bad_run_name("r" * 300, "is 300 bytes long; at most 191 fit"),
        output_root_is_a_file, outputs_folder_read_only, model_path_symlink_loop,
        endpoint_keys_checked],
    "endpoints": [
        endpoint(lambda body: {"content": "late", "sleep": 3}, _hanging),
        endpoint(lambda body: {"status": 500}, _server_error),
        endpoint(lambda body: {"raw": '{"id": "x", "choices": [{"mess',
                               "content_type": "application/json"}, _not_json),
        endpoint(lambda body: {"raw": "<html><title>Sign in</title></html>"}, _html_page),
        endpoint(lambda body: {"raw": '{"error": "overloaded"}',
                               "content_type": "application/json"}, _no_choices),
        endpoint(flaky, _answers_kept_and_resumed),
        endpoint(lambda body: {"content": "ok", "sleep": 0.7}, _progress_while_waiting)],
    "bounded_inputs": [
        image_row(_bomb, "3000x3000 = 9,000,000 pixels, above max_image_pixels=1,000,000",
                  row_rules.Limits(image_pixels=1_000_000)),
        image_row(_pil_bomb, "decompression bomb"),
        image_row(_zero, "empty file (0 bytes)"),
        image_row(_truncated, "unreadable (image file is truncated"),
        image_row(_not_an_image, "not an image PIL can read"),
        long_question_skipped, too_many_bad_rows_fail_naming_them, limits_are_profile_keys,
        common_table_image_bounded],
}
TABLE = [pytest.param(fn, id=f"{kind}-{i:02d}-{getattr(fn, '__name__', 'case')}")
         for kind, fns in CASES.items() for i, fn in enumerate(fns)]


def test_the_table_covers_every_class():
    assert len(TABLE) >= 25 and all(len(fns) >= 3 for fns in CASES.values())


@pytest.mark.parametrize("case", TABLE)
def test_case(case, request, tmp_path, capsys):
    needs = case.__code__.co_varnames[:case.__code__.co_argcount]
    args = [request.getfixturevalue("held") if name == "held" else
            tmp_path if name == "tmp_path" else capsys for name in needs]
    case(*args)
