"""Which stages of a run are out of date, read from their manifests (`runs.Run`).

A stage is stale against an upstream stage when that stage ran again after it started, or
now holds another artifact than the one it recorded (other parameters). A stage's executed
record (`<stage>.ipynb` and its HTML, written by `synergy run`) is older than its results
when the stage ran since by hand (JupyterLab, papermill, a script): the manifest's
`executed_by` says which, and the files' times confirm it.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from synergy import stages
from synergy.files import read_json
from synergy.runs import EXECUTED_BY_RUNNER, MANIFEST, Run

COLUMNS = ["stage", "finished", "executed_by", "stale_against", "record"]


def _time(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None


def _upstream_stages(manifest: dict, by_section: dict[str, str]) -> dict[str, str]:
    """{upstream stage: the artifact id this stage recorded for it}: recorded under the
    stage's name (`needs`) or as a model of it ("<section>-<hash>[:<model>]")."""
    out = {}
    for key, artifact in (manifest.get("upstream") or {}).items():
        artifact = str(artifact).split(":")[0]
        name = key if key in by_section.values() else by_section.get(artifact.split("-")[0])
        if name:
            out.setdefault(name, artifact)
    return out


def record_state(run: Run, stage: stages.Stage, manifest: dict) -> str:
    """"current", "older than its results" or "none" (no executed notebook)."""
    folder = run.dir(stage)
    record = folder / f"{stage.name}.ipynb"
    if not record.exists():
        return "none"
    ran_by_hand = manifest.get("executed_by", EXECUTED_BY_RUNNER) != EXECUTED_BY_RUNNER
    older = record.stat().st_mtime < (folder / MANIFEST).stat().st_mtime
    return "older than its results" if ran_by_hand and older else "current"


def staleness(run: Run) -> pd.DataFrame:
    """One row per stage that has run: when it finished, how it ran, the upstream stages it
    is stale against (with why) and the state of its executed record."""
    ran = {s.name: read_json(run.dir(s) / MANIFEST) for s in stages.STAGES if run.has_run(s)}
    by_section = {s.section: s.name for s in stages.STAGES}
    rows = []
    for name, manifest in ran.items():
        started = _time(manifest.get("started"))
        why = []
        for up, recorded in _upstream_stages(manifest, by_section).items():
            if up == name:
                continue
            if up not in ran:
                why.append(f"{up} (not run now)")
            elif ran[up].get("artifact_id") != recorded:
                why.append(f"{up} (other parameters since)")
            elif started and (_time(ran[up].get("finished")) or started) > started:
                why.append(f"{up} (ran again since)")
        rows.append({"stage": name, "finished": manifest.get("finished", ""),
                     "executed_by": manifest.get("executed_by", ""),
                     "stale_against": ", ".join(why),
                     "record": record_state(run, stages.find(name), manifest)})
    return pd.DataFrame(rows, columns=COLUMNS)


def warnings(table: pd.DataFrame) -> list[str]:
    """One line per problem in a `staleness` table (none: everything is current)."""
    lines = [f"{r.stage} is stale: its upstream changed after it ran: {r.stale_against}"
             for r in table.itertuples() if r.stale_against]
    lines += [f"{r.stage}: its executed notebook and HTML show an earlier run (it ran since "
              f"by hand, {r.executed_by})" for r in table.itertuples()
              if r.record == "older than its results"]
    return lines
