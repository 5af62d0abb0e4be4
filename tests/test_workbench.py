"""The researcher's workbench: the HTML a stage shares, a notebook on a profile (in Lab and
with papermill, the README's example as written), progress output, kernels without
warnings, stages out of date, `make lab`, and the report and Lab in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from conftest import ROOT, run_stages
from synergy import pipeline, progress, staleness
from synergy.config import load_profile, profile_section
from synergy.files import write_json
from synergy.runs import EXECUTED_BY_RUNNER, MANIFEST, Run

SMOKE = ROOT / "params" / "smoke.yaml"
TINY = ROOT / "params" / "tiny.yaml"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chrome on PATH")


# --- the HTML a stage shares ------------------------------------------------------------

def _notebook(path: Path) -> Path:
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# The question"),
        v4.new_code_cell("run_name = 'tiny'", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("output_root = '/abs/machine/outputs'",
                         metadata={"tags": ["injected-parameters"]}),
        v4.new_code_cell("report_secret()", outputs=[
            v4.new_output("stream", name="stdout", text="shown on stdout\n"),
            v4.new_output("stream", name="stderr", text="progress-noise 10%\r\n"),
            v4.new_output("display_data", data={"text/html": "<p>the figure</p>"})])])
    nbformat.write(nb, path)
    return path


def test_html_shows_the_narrative_and_outputs_only(tmp_path):
    notebook = _notebook(tmp_path / "x.ipynb")
    html = pipeline.render_html(notebook, tmp_path / "x.html").read_text()
    assert "The question" in html and "the figure" in html and "shown on stdout" in html
    for hidden in ("report_secret", "run_name", "/abs/machine", "progress-noise"):
        assert hidden not in html, hidden
    coded = pipeline.render_html(notebook, tmp_path / "y.html", show_code=True).read_text()
    assert "report_secret" in coded and "run_name" in coded
    assert "/abs/machine" not in coded  # never the injected cell


def test_notebooks_have_cell_ids_and_read_back_unchanged():
    import warnings

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # MissingIDFieldWarning, validation warnings
            nb = nbformat.read(path, as_version=4)
            nbformat.validate(nb)
        assert (nb.nbformat, nb.nbformat_minor) >= (4, 5), path.name
        ids = [c.id for c in nb.cells]
        assert len(set(ids)) == len(ids), path.name
        assert nbformat.writes(nb) + "\n" == path.read_text(), path.name  # opening changes nothing


def test_figures_carry_plotly_mimetype_beside_html(tmp_path):
    """Lab draws plotly's own output type without trusting the notebook; the shared HTML
    takes the HTML one, with plotly.js inlined once and nothing from a CDN for plotly."""
    import plotly.graph_objects as go
    import plotly.io as pio

    import synergy

    synergy.setup_notebook()
    bundle = pio.renderers._build_mime_bundle(go.Figure(go.Bar(y=[1])).to_dict())
    assert {"application/vnd.plotly.v1+json", "text/html"} <= set(bundle)
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_code_cell("fig", outputs=[
        v4.new_output("display_data", data=bundle) for _ in range(2)])])
    nbformat.write(nb, tmp_path / "f.ipynb")
    html = pipeline.render_html(tmp_path / "f.ipynb", tmp_path / "f.html").read_text()
    assert html.count("Plotly.newPlot") == 2
    assert not re.search(r"<script[^>]+src=[\"'][^\"']*(plot|mathjax/3)", html)


# --- a notebook on a profile --------------------------------------------------------------

def test_profile_parameter_fills_what_is_left_as_shipped():
    cls = pipeline.find_stage("sft").config
    shipped = profile_section(load_profile(TINY), "sft", TINY)
    smoke = cls.from_profile(SMOKE).to_dict()
    assert cls.from_params({**shipped, "profile": "params/smoke.yaml"}).to_dict() == smoke
    mine = cls.from_params({**shipped, "profile": "params/smoke.yaml", "run_name": "mine"})
    assert mine.to_dict() == {**smoke, "run_name": "mine"}
    # papermill's -p wins even with the shipped value (read from the injected cell)
    injected = "# Parameters\nprofile = 'params/smoke.yaml'\nseed = 0\n"
    kept = cls.from_params({**shipped, "profile": "params/smoke.yaml", "In": ["", injected]})
    assert kept.seed == shipped["seed"]
    assert cls.from_params({**shipped, "profile": ""}).to_dict() == cls.from_profile(TINY).to_dict()


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_papermill_example_runs_as_written(tmp_path):
    """The README's papermill block, run verbatim in a copy of the project (its .venv a link
    to this interpreter's), gives the config `synergy run` would, plus the one key set."""
    for name in ("notebooks", "params"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    block = _readme_block("### One notebook with your own parameters (papermill)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    done = subprocess.run(["bash", "-ec", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = Run(tmp_path / "outputs", "mine")
    manifest = run.manifest("01")
    expected = pipeline.find_stage("01").config.from_mapping(
        {**profile_section(load_profile(SMOKE), "stratify", SMOKE), "run_name": "mine",
         "n_samples": 8}, "test").to_dict()
    got = {**manifest["params"], "output_root": expected["output_root"]}
    assert got == expected
    assert manifest["executed_by"] == "by hand"
    assert run.manifest("00")["executed_by"] == EXECUTED_BY_RUNNER
    # the runner's kernel has CurveZMQ keys; papermill's own (by hand) does not
    assert done.stderr.count("without encryption") <= 1


# --- progress -------------------------------------------------------------------------------

def _lines_mode_stderr(code: str, interval: float) -> str:
    """What `code` writes to stderr in a process whose bars are in the lines mode."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), progress.MODE_VARIABLE: "lines",
           "SYNERGY_PROGRESS_INTERVAL": str(interval)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120).stderr


def test_progress_lines_mode_prints_a_line_per_interval():
    code = ("import time\nfrom synergy.progress import progress_bar\n"
            "b = progress_bar(total=60, desc='sampling', mininterval=0.01)\n"
            "for i in range(60):\n    time.sleep(0.02); b.update(); b.refresh()\n"
            "b.close()\n")
    out = _lines_mode_stderr(code, interval=0.5)
    lines = out.splitlines()
    assert "\r" not in out and 2 <= len(lines) <= 6, out  # ~1.2 s at one line per 0.5 s
    assert lines[-1].startswith("sampling: 100%")


def test_progress_lines_of_an_iterated_bar_never_count_past_its_total():
    """The world's training bar: iterated, with set_postfix every step (a refresh). Each
    line's count is at most the total, never goes back (once it printed 645/600) and never
    repeats before the closing line (a refresh from set_postfix printed the count tqdm had
    last synced: 365/600 twice, 15 s apart)."""
    code = ("import time\nfrom synergy.progress import progress_bar\n"
            "b = progress_bar(range(150), desc='training base', unit='step')\n"
            "for i in b:\n    time.sleep(0.01); b.set_postfix(loss=f'{1 / (i + 1):.3f}')\n")
    out = _lines_mode_stderr(code, interval=0.2)
    counts = [int(m) for m in re.findall(r"\| *(\d+)/150 ", out)]
    assert len(counts) >= 3 and "step [" not in out, out  # "645step [": past its total
    assert counts == sorted(counts) and counts[-1] == 150, out
    assert len(set(counts[:-1])) == len(counts[:-1]), out


def test_training_bar_shows_steps_loss_and_time_left(monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_VARIABLE, "terminal")
    bar = progress.training_bar("sft")
    state = SimpleNamespace(max_steps=4, global_step=0, is_world_process_zero=True)
    bar.on_train_begin(None, state, None)
    for step in range(1, 5):
        state.global_step = step
        bar.on_log(None, state, None, logs={"loss": 1.0 / step})
        bar.on_step_end(None, state, None)
    bar.bar.refresh()
    shown = capsys.readouterr().err
    bar.on_train_end(None, state, None)
    assert "training sft" in shown and "4/4" in shown and "loss=0.25" in shown
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", shown)  # elapsed<left


def test_kernel_has_no_tcp_warning(tmp_path, capfd):
    import papermill

    notebook = tmp_path / "t.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3",
                              "language": "python"}
    nbformat.write(nb, notebook)
    with pipeline.kernel_environment():
        papermill.execute_notebook(str(notebook), str(tmp_path / "o.ipynb"),
                                   kernel_name="python3", progress_bar=False,
                                   config=pipeline.kernel_config(),
                                   **pipeline.streams(True))
    out, err = capfd.readouterr()
    assert "2" in out
    assert "without encryption" not in out + err and "Warning" not in err
    assert progress.MODE_VARIABLE not in os.environ  # restored


# --- stages out of date ---------------------------------------------------------------------

def _manifest(run: Run, stage: str, artifact: str, started: str, upstream=None,
              by=EXECUTED_BY_RUNNER) -> None:
    folder = run.dir(stage)
    write_json(folder / MANIFEST, {"artifact_id": artifact, "started": started,
                                   "finished": started, "upstream": upstream or {},
                                   "executed_by": by})


def test_staleness_against_upstream_and_of_the_executed_record(tmp_path):
    run = Run(tmp_path, "r")
    _manifest(run, "00", "world-aaa", "2026-01-01T10:00:00+00:00")
    _manifest(run, "01", "stratify-bbb", "2026-01-01T11:00:00+00:00",
              {"base": "world-aaa:base"})
    _manifest(run, "02", "distill-ccc", "2026-01-01T12:00:00+00:00",
              {"01_stratify": "stratify-old"})
    table = staleness.staleness(run).set_index("stage")
    assert table.at["01_stratify", "stale_against"] == ""
    assert table.at["02_distill", "stale_against"] == "01_stratify (other parameters since)"
    # 00 ran again, by hand, after 01 started; its executed notebook predates that
    record = run.dir("00") / "00_world.ipynb"
    record.write_text("{}")
    os.utime(record, (time.time() - 60, time.time() - 60))
    _manifest(run, "00", "world-aaa", "2026-01-01T13:00:00+00:00", by="by hand")
    table = staleness.staleness(run).set_index("stage")
    assert table.at["01_stratify", "stale_against"] == "00_world (ran again since)"
    assert table.at["00_world", "record"] == "older than its results"
    lines = staleness.warnings(table.reset_index())
    assert any(line.startswith("01_stratify is stale") for line in lines)
    assert any("00_world: its executed notebook and HTML show an earlier run" in line
               for line in lines)


# --- JupyterLab -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _poll(url: str):
    """`_get` for a loop that asks again: None on a server error. jupyter_server answers
    500 when it lists a kernel whose start is under way (its `last_activity` not set yet)."""
    try:
        return _get(url)
    except urllib.error.HTTPError as e:
        if e.code < 500:
            raise
        return None


class Lab:
    """A JupyterLab server started by `command` (a process group), with its log."""

    def __init__(self, command: list[str], cwd: Path, log: Path, port: int, token: str):
        self.url, self.token, self.log = f"http://127.0.0.1:{port}", token, log
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
        for _ in range(120):
            try:
                _get(self.api("api/status"))
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not start: {log.read_text()[-2000:]}")

    def api(self, path: str) -> str:
        return f"{self.url}/{path}?token={self.token}"

    def wait_idle(self, seconds: float) -> bool:
        """Whether a kernel runs and every kernel is idle within `seconds`."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            kernels = _poll(self.api("api/kernels"))
            if kernels and all(k["execution_state"] == "idle" for k in kernels):
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=30)


def test_make_lab_serves_the_project_root_for_this_user(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    assert ("--allow-root" in dry) == (os.getuid() == 0)
    assert "--ServerApp.root_dir=." in dry and "--ServerApp.ip=127.0.0.1" in dry
    port = _free_port()
    lab = Lab(["make", "-o", ".venv/.installed", "lab", f"BIN={Path(sys.executable).parent}",
               f"LAB_ARGS=--no-browser --port {port} --IdentityProvider.token=t0k"],
              ROOT, tmp_path / "lab.log", port, "t0k")
    try:
        names = {c["name"] for c in _get(lab.api("api/contents"))["content"]}
        assert {"notebooks", "outputs", "params"} <= names
        request = urllib.request.Request(lab.api("api/kernels"), data=b"{}", method="POST")
        kernel = json.loads(urllib.request.urlopen(request, timeout=30).read())
        for _ in range(60):
            state = _poll(lab.api(f"api/kernels/{kernel['id']}"))
            if state and state["execution_state"] == "idle":
                break
            time.sleep(0.5)
        assert "without encryption" not in lab.log.read_text()
    finally:
        lab.stop()


# --- a real browser ---------------------------------------------------------------------------

def _chromium(url: str, out: Path, *, screenshot: bool, budget_ms: int = 30000,
              size: str = "1300,2400") -> str:
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={size}", f"--virtual-time-budget={budget_ms}"]
    if screenshot:
        subprocess.run([*flags, f"--screenshot={out}", url], capture_output=True, timeout=300)
        return ""
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                          timeout=300).stdout


@needs_chromium
@pytest.mark.slow
def test_report_html_in_a_browser(smoke_series, tmp_path):
    """08's HTML in Chromium: the verdict, the headline figure drawn (plotly's SVG), the
    checklist; no code, no machine path. Screenshots go to tmp_path."""
    shutil.copytree(smoke_series / "smoke", tmp_path / "smoke")
    run_stages(tmp_path, "08")
    html = tmp_path / "smoke" / "08_report" / "08_report.html"
    assert str(tmp_path) not in html.read_text()
    dom = _chromium(html.as_uri(), tmp_path / "report.png", screenshot=False)
    _chromium(html.as_uri(), tmp_path / "report.png", screenshot=True)
    assert "Verdict:" in dom and "The paper's findings, checked" in dom
    assert "Base, SFT, RL and the best combination" in dom  # the headline's title, drawn
    assert dom.count('class="main-svg"') >= 3 * 5  # every figure rendered as SVG
    assert "SFT helps the hardest questions" in dom  # the checklist
    assert "report.run(cfg)" not in dom
    assert (tmp_path / "report.png").stat().st_size > 10_000


@needs_chromium
@pytest.mark.slow
def test_executed_notebook_in_lab_draws_its_figures_untrusted(smoke_root, tmp_path):
    """JupyterLab (driven by Chromium) opens an executed notebook that was never trusted and
    draws every plotly figure; the notebook has no error output."""
    folder = smoke_root / "smoke" / "01_stratify"
    notebook = nbformat.read(folder / "01_stratify.ipynb", as_version=4)
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
    assert figures >= 1
    port = _free_port()
    lab = Lab([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={smoke_root}",
               "--IdentityProvider.token=t0k", "--KernelManager.transport_encryption=auto",
               *(["--allow-root"] if os.getuid() == 0 else [])],
              smoke_root, tmp_path / "lab.log", port, "t0k")
    try:
        url = f"{lab.url}/lab/tree/smoke/01_stratify/01_stratify.ipynb?token=t0k"
        dom = _chromium(url, tmp_path / "lab.png", screenshot=False, budget_ms=45000)
        _chromium(url, tmp_path / "lab.png", screenshot=True, budget_ms=45000,
                  size="1300,1400")
    finally:
        lab.stop()
    assert dom.count("jp-RenderedPlotly") >= figures


class Browser:
    """Headless Chromium driven over the DevTools protocol (websocket-client, which Jupyter
    Server already installs): navigate, evaluate JavaScript, press keys, screenshot."""

    def __init__(self, profile_dir: Path):
        import websocket

        port = _free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,1400",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile_dir}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        for _ in range(100):
            try:
                pages = _get(f"http://127.0.0.1:{port}/json")
                page = next(p for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration):
                time.sleep(0.2)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.n:
                return reply.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 120):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.js(expression):
                return True
            time.sleep(0.5)
        return False

    def key(self, key: str, code: str, keycode: int, modifiers: int = 0):
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code,
                      windowsVirtualKeyCode=keycode, modifiers=modifiers)

    def screenshot(self, path: Path):
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot")["data"]))

    def close(self):
        self.ws.close()
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=30)


@needs_chromium
@pytest.mark.slow
def test_lab_runs_a_notebook_on_the_smoke_run(smoke_root, tmp_path):
    """In JupyterLab, driven by Chromium: open 00's executed notebook of the smoke run, run
    every cell (Shift+Enter), and find no error output and every plotly figure drawn; the
    stage's manifest then says it ran by hand and its HTML shows an earlier run."""
    root = tmp_path / "root"
    shutil.copytree(smoke_root / "smoke" / "00_world", root / "smoke" / "00_world")
    notebook = root / "smoke" / "00_world" / "00_world.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:  # the run's own output root, now this copy
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = re.sub(r"output_root = .*", f"output_root = {str(root)!r}",
                                 cell.source)
    nbformat.write(nb, notebook)
    os.utime(notebook, (time.time() - 60, time.time() - 60))
    port = _free_port()
    lab = Lab([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
               "--IdentityProvider.token=t0k", "--KernelManager.transport_encryption=auto",
               *(["--allow-root"] if os.getuid() == 0 else [])],
              root, tmp_path / "lab.log", port, "t0k")
    browser = Browser(tmp_path / "chromium")
    try:
        browser.call("Page.navigate",
                     url=f"{lab.url}/lab/tree/smoke/00_world/00_world.ipynb?token=t0k")
        assert browser.wait_for("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 3")
        assert lab.wait_idle(120)  # the notebook's kernel started
        cells = browser.js("document.querySelectorAll('.jp-Notebook .jp-Cell').length")
        browser.js("document.querySelector('.jp-Notebook .jp-Cell').click()")
        browser.key("Escape", "Escape", 27)
        for _ in range(cells):
            browser.key("Enter", "Enter", 13, modifiers=8)  # Shift+Enter: run, go down
            time.sleep(0.3)
        time.sleep(2)
        assert lab.wait_idle(300) and browser.wait_for(
            "[...document.querySelectorAll('.jp-InputArea-prompt')].every("
            "p => !p.textContent.includes('*'))", 60)
        browser.screenshot(tmp_path / "lab_run.png")
        errors = browser.js("document.querySelectorAll("
                            "'[data-mime-type=\"application/vnd.jupyter.error\"]').length")
        drawn = browser.js("document.querySelectorAll('.jp-RenderedPlotly .main-svg').length")
    finally:
        browser.close()
        lab.stop()
    assert errors == 0
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {})
                  for c in nb.cells for o in c.get("outputs", []))
    assert drawn >= figures >= 1
    run = Run(root, "smoke")
    assert run.manifest("00")["executed_by"] == "by hand"
    assert staleness.staleness(run).set_index("stage").at["00_world", "record"] == \
        "older than its results"
