"""Command line.

    python -m synergy run --profile params/tiny.yaml [--stages 00 01] [--run-name x]
    python -m synergy report --run tiny                      # re-render one run's report
    python -m synergy status --run tiny                      # stages out of date
    python -m synergy train sft --profile P --run-name R     # a stage's training only
    accelerate launch [--config_file accelerate/zero3.yaml] -m synergy train grpo --profile P
    python -m synergy eval --model owner/name --model 03_sft --profile P --run-name R

`train` runs the stage module's `train_models(cfg)` (the function its notebook launches),
in every process when started by `accelerate launch`; the stage's notebook (`run`) then
reuses what was trained and evaluates it. `eval` evaluates any models on the run's
stratified benchmark and adds them to its report.

Exit codes: 0 done; 2 a bad parameter, profile or missing upstream, or a stage another
process is working on, found before any stage ran; 1 a stage failed (one line
`synergy: <stage>: <cause>`, then the executed notebook's path) or a file could not be
written (the path named); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from synergy import evaluation, judge, models, pipeline, stages, staleness, stratify, training
from synergy.config import ConfigError, load_profile, profile_section
from synergy.files import ArtifactError, write_text
from synergy.runs import Run, stage_lock


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synergy")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebook series on a profile")
    run.add_argument("--profile", default="params/tiny.yaml")
    run.add_argument("--stages", nargs="*", help="stage names or numbers (default: all)")
    run.add_argument("--run-name", help="override run.run_name")
    run.add_argument("--quiet", action="store_true", help="do not stream cell output")
    run.add_argument("--show-code", action="store_true",
                     help="keep code cells in the HTML (default: narrative and outputs)")
    report = sub.add_parser("report", help="re-render the HTML report of a finished run")
    report.add_argument("--run", required=True, dest="run_name", help="the run's name")
    report.add_argument("--profile", default="params/tiny.yaml")
    report.add_argument("--quiet", action="store_true", help="do not stream cell output")
    report.add_argument("--show-code", action="store_true",
                        help="keep code cells in the HTML (default: narrative and outputs)")
    status = sub.add_parser("status", help="which stages of a run are stale against their "
                                           "upstream or ran by hand since their HTML")
    status.add_argument("--run", required=True, dest="run_name", help="the run's name")
    status.add_argument("--profile", default="params/tiny.yaml", help="for its output_root")
    train = sub.add_parser("train", help="train a stage's models (every process of an "
                                         "`accelerate launch`), without evaluating them")
    train.add_argument("stage", help="a training stage: sft / 03, grpo / 04")
    train.add_argument("--profile", default="params/tiny.yaml")
    train.add_argument("--run-name", help="override run.run_name")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    ev = sub.add_parser("eval", help="evaluate models (hub ids, folders, this run's stages) "
                                     "per level on the run's stratified benchmark")
    ev.add_argument("--model", action="append", required=True, dest="models",
                    help="a hub id, a model folder or '<stage>[:<name>]'; repeat for more")
    ev.add_argument("--profile", default="params/tiny.yaml")
    ev.add_argument("--run-name", help="override run.run_name")
    ev.add_argument("--like", default=stages.MERGING.section,
                    help="the profile section whose eval keys (samples, sampling, backend) "
                         "to use (default: merging, whose numbers the report shows first)")
    ev.add_argument("--judge-url", help="an OpenAI-compatible endpoint (up to /v1) to judge "
                                        "the answers the rules cannot decide")
    ev.add_argument("--judge-model", help="the judge's model name at that endpoint")
    ev.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                    help="environment variable holding the judge's API key (never stored)")
    ev.add_argument("--judge-check", type=int, default=0,
                    help="also judge this many samples the rules decided (agreement)")
    ev.add_argument("--no-report", action="store_true",
                    help="do not re-render the run's report (done when it exists)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def stage_config(stage: stages.Stage, profile: str, run_name: str | None):
    values = profile_section(load_profile(profile), stage.section, profile)
    return stage.config.from_mapping({**values, **({"run_name": run_name} if run_name else {})},
                                     profile)


def stale_lines(profile: str, run_name: str | None) -> tuple[str, list[str]]:
    """The `staleness` table of a run (as text) and its warnings."""
    run = Run.of(stage_config(stages.STAGES[0], profile, run_name))
    table = staleness.staleness(run)
    return table.to_string(index=False), staleness.warnings(table)


def status(args) -> int:
    table, lines = stale_lines(args.profile, args.run_name)
    print(table)
    for line in lines or ["[synergy] every stage is current"]:
        print(f"[synergy] {line}" if not line.startswith("[") else line)
    return 0


def train(args) -> int:
    """A stage's `train_models(cfg)` in this process (one of many under accelerate)."""
    stage = stages.find(args.stage)
    fn = getattr(stage.load_module(), "train_models", None)
    if fn is None:
        raise ConfigError(f"stage {stage.name} trains nothing; stages that train: "
                          f"{[s.name for s in stages.STAGES if hasattr(s.load_module(), 'train_models')]}")
    cfg = stage_config(stage, args.profile, args.run_name)
    # One process per stage: rank 0 of a launch holds the stage's lock for all its ranks.
    with stage_lock(Run.of(cfg).dir(stage)) if os.environ.get("RANK", "0") == "0" \
            else contextlib.nullcontext():
        records = fn(cfg, progress=not args.quiet)
    main = training.is_main_process()
    training.leave_process_group()
    if main:
        for r in records:
            print(f"[synergy] {stage.name}: trained {r.get('label', r.get('key'))}: "
                  f"{r.get('steps')} steps on {r.get('num_processes', 1)} process(es), "
                  f"global batch {r.get('global_batch')}")
    return 0


def evaluate(args) -> int:
    """`evaluation.evaluate_external` on the run's stratified benchmark, then the judge."""
    cfg = stage_config(stages.find(args.like), args.profile, args.run_name)
    if not isinstance(cfg, evaluation.EvaluatingConfig):
        raise ConfigError(f"--like {args.like}: section '{cfg.SECTION}' has no eval keys")
    run = Run.of(cfg)
    levels = stratify.load(cfg.output_root, cfg.run_name)
    timeout = getattr(cfg, "ddp_timeout_s", training.DDP_TIMEOUT_S)  # --like sft / grpo
    processes = training.join_process_group(timeout) if training.world_size() > 1 else None
    results = evaluation.evaluate_external(
        cfg, args.models, stratify.benchmark_questions(levels.levels),
        stratify.config_of(run).prompt_suffix,
        upstream={stages.STRATIFY.name: levels.manifest["artifact_id"]},
        progress=not args.quiet, processes=processes)
    if processes is not None and not processes.is_main_process:
        return 0
    table = evaluation.per_level(results)
    print(table.pivot(index="model", columns="level", values="accuracy").round(3).to_string())
    if args.judge_url:
        judge_models(args, run, {label: results[label] for label in models.labels(args.models)})
    if not args.no_report and run.has_run(stages.REPORT):
        pipeline.run_series(args.profile, [stages.REPORT.name], {"run_name": cfg.run_name},
                            log_output=False)
    print(f"[synergy] evaluated {len(args.models)} model(s) -> {run.external}")
    return 0


def judge_models(args, run, results) -> None:
    """The judge on each model's undecided answers; `external/judge/<label>.csv` and the
    rule-vs-judge agreement in `external/judge_summary.csv`."""
    import pandas as pd

    if not args.judge_model:
        raise ConfigError("--judge-url needs --judge-model (the model name at the endpoint)")
    # The profile's endpoint keys (distill.api_timeout, api_retries, api_max_failures).
    endpoint_keys = judge.client_settings(stage_config(stages.DISTILL, args.profile,
                                                       args.run_name))
    client = judge.Client(judge.Endpoint(args.judge_url, args.judge_model, args.judge_key_env),
                          run.root / "cache" / "judge", **endpoint_keys)
    rows = []
    for label, df in results.items():
        judged = judge.judge_results(client, df, check_decided=args.judge_check)
        write_text(run.external / "judge" / f"{label}.csv", judged.to_csv(index=False))
        accuracy = judge.judged_accuracy(df, judged).set_index("level")
        rows.append({"model": label, **judge.agreement(judged),
                     "accuracy": accuracy.at["all", "accuracy"],
                     "accuracy_with_judge": accuracy.at["all", "accuracy_with_judge"]})
    summary = pd.DataFrame(rows).assign(judge=client.endpoint.id, calls=client.calls,
                                        cached=client.cached)
    write_text(run.external / "judge_summary.csv", summary.to_csv(index=False))
    print(summary.drop(columns="judge").to_string(index=False))


INTERRUPTED = "synergy: interrupted; the same command resumes where it stopped"


def _interrupted(signum, frame):
    """Ctrl-C in the command line: say the one line, then keep the shutdown quiet (the
    notebook client's "Kernel died" and asyncio's unretrieved-task tracebacks)."""
    print(INTERRUPTED, file=sys.stderr, flush=True)
    _interrupted.said = True
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt


_interrupted.said = False


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "eval":
            return evaluate(args)
        if args.command == "status":
            return status(args)
        if args.command == "report":
            args.stages = [stages.REPORT.name]
        overrides = {"run_name": args.run_name} if args.run_name else None
        paths = pipeline.run_series(args.profile, args.stages, overrides,
                                    log_output=not args.quiet, show_code=args.show_code)
    except pipeline.StageFailed as exc:  # one line, then where to look
        print(f"synergy: {exc}", file=sys.stderr)
        if exc.notebook:
            print(f"synergy: executed notebook: {exc.notebook}", file=sys.stderr)
        return 1
    except (ConfigError, ArtifactError) as exc:  # before any stage ran
        print(f"synergy: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder that cannot be written: the path named
        print(f"synergy: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not _interrupted.said:
            print(INTERRUPTED, file=sys.stderr)
        return 130
    print(f"[synergy] done: {len(paths)} notebook(s); last report: "
          f"{paths[-1].with_suffix('.html')}")
    for line in stale_lines(args.profile, args.run_name)[1]:
        print(f"[synergy] warning: {line}")
    reports = [p for p in paths if p.stem == stages.REPORT.name]
    if reports:
        print(f"[synergy] run report: {reports[-1].with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupted)
    sys.exit(main())
