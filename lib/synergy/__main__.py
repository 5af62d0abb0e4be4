"""Command line: `python -m synergy run --profile params/tiny.yaml [--stages 00 01]`,
`python -m synergy report --run tiny` (re-render one run's report).

Exit codes: 0 done; 2 a bad parameter, profile or missing upstream, found before any stage
ran; 1 a stage failed (one line `synergy: <stage>: <cause>`, then the executed notebook's
path); 130 interrupted."""

from __future__ import annotations

import argparse
import sys

from synergy import stages
from synergy.config import ConfigError
from synergy.files import ArtifactError


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    if args.command == "report":
        args.stages = [stages.REPORT.name]

    from synergy import pipeline

    overrides = {"run_name": args.run_name} if args.run_name else None
    try:
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
