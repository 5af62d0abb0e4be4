"""Command line.

    python -m synergy run --profile params/tiny.yaml [--stages 00 01] [--run-name x]
    python -m synergy report --run tiny                      # re-render one run's report
    python -m synergy train sft --profile P --run-name R     # a stage's training only
    accelerate launch [--config_file accelerate/zero3.yaml] -m synergy train grpo --profile P
    python -m synergy eval --model owner/name --model 03_sft --profile P --run-name R

`train` runs the stage module's `train_models(cfg)` (the function its notebook launches),
in every process when started by `accelerate launch`; the stage's notebook (`run`) then
reuses what was trained and evaluates it. `eval` evaluates any models on the run's
stratified benchmark and adds them to its report.

Exit codes: 0 done; 2 a bad parameter, profile or missing upstream, found before any stage
ran; 1 a stage failed (one line `synergy: <stage>: <cause>`, then the executed notebook's
path); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from synergy import pipeline, stages
from synergy.config import ConfigError
from synergy.files import ArtifactError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synergy")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebook series on a profile")
    run.add_argument("--profile", default="params/tiny.yaml")
    run.add_argument("--stages", nargs="*", help="stage names or numbers (default: all)")
    run.add_argument("--run-name", help="override run.run_name")
    run.add_argument("--quiet", action="store_true", help="do not stream cell output")
    report = sub.add_parser("report", help="re-render the HTML report of a finished run")
    report.add_argument("--run", required=True, dest="run_name", help="the run's name")
    report.add_argument("--profile", default="params/tiny.yaml")
    report.add_argument("--quiet", action="store_true", help="do not stream cell output")
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
    from synergy.config import load_profile, profile_section

    values = profile_section(load_profile(profile), stage.section, profile)
    return stage.config.from_mapping({**values, **({"run_name": run_name} if run_name else {})},
                                     profile)


def train(args) -> int:
    """A stage's `train_models(cfg)` in this process (one of many under accelerate)."""
    from synergy import training

    stage = stages.find(args.stage)
    fn = getattr(stage.load_module(), "train_models", None)
    if fn is None:
        raise ConfigError(f"stage {stage.name} trains nothing; stages that train: "
                          f"{[s.name for s in stages.STAGES if hasattr(s.load_module(), 'train_models')]}")
    records = fn(stage_config(stage, args.profile, args.run_name), progress=not args.quiet)
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
    from synergy import evaluation, models, stratify, training
    from synergy.runs import Run

    cfg = stage_config(stages.find(args.like), args.profile, args.run_name)
    if not isinstance(cfg, evaluation.EvaluatingConfig):
        raise ConfigError(f"--like {args.like}: section '{cfg.SECTION}' has no eval keys")
    run = Run.of(cfg)
    levels = stratify.load(cfg.output_root, cfg.run_name)
    processes = training.process_state() if training.world_size() > 1 else None
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

    from synergy import judge
    from synergy.files import write_text

    if not args.judge_model:
        raise ConfigError("--judge-url needs --judge-model (the model name at the endpoint)")
    client = judge.Client(judge.Endpoint(args.judge_url, args.judge_model, args.judge_key_env),
                          run.root / "cache" / "judge")
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "eval":
            return evaluate(args)
        if args.command == "report":
            args.stages = [stages.REPORT.name]
        overrides = {"run_name": args.run_name} if args.run_name else None
        paths = pipeline.run_series(args.profile, args.stages, overrides,
                                    log_output=not args.quiet)
    except pipeline.StageFailed as exc:  # one line, then where to look
        print(f"synergy: {exc}", file=sys.stderr)
        if exc.notebook:
            print(f"synergy: executed notebook: {exc.notebook}", file=sys.stderr)
        return 1
    except (ConfigError, ArtifactError) as exc:  # before any stage ran
        print(f"synergy: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synergy: interrupted; the same command resumes where it stopped",
              file=sys.stderr)
        return 130
    print(f"[synergy] done: {len(paths)} notebook(s); last report: "
          f"{paths[-1].with_suffix('.html')}")
    reports = [p for p in paths if p.stem == stages.REPORT.name]
    if reports:
        print(f"[synergy] run report: {reports[-1].with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
