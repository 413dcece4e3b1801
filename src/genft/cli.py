"""The `genft` command: data, models, evaluation, suites and reports."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .files import describe_os_error, write_json


def _add_data_dir(p):
    p.add_argument("--data-dir", help="data folder (default: $GENFT_DATA_DIR, else ./data)")


def cmd_data_import_study(args) -> int:
    from .data import data_dir, import_study

    import_study(args.src, args.data_dir, protocol=args.protocol, verify=args.verify)
    print(f"imported into {data_dir(args.data_dir)} (protocol {args.protocol})")
    return 0


def cmd_data_build_hub(args) -> int:
    from .data import data_dir
    from .data.hub import build_hub

    build_hub(args.sets, args.data_dir, sizes=args.sizes, test_size=args.test_size, seed=args.seed,
              hub_dir=args.hub_dir, revision=args.revision, replace=args.replace)
    print(f"built into {data_dir(args.data_dir)}")
    return 0


def cmd_data_builtin(args) -> int:
    from .builtin import generate
    from .data import data_dir

    generate(args.data_dir)
    print(f"wrote genft's builtin data into {data_dir(args.data_dir)}")
    return 0


def cmd_model_prepare(args) -> int:
    from .models import prepare

    print(prepare(args.name))
    return 0


def cmd_eval(args) -> int:
    """Evaluate one model on genft tasks and print a table (one model load for every task and shot count)."""
    from tabulate import tabulate

    from . import harness
    from .data import data_dir
    from .models import resolve

    os.environ["GENFT_DATA_DIR"] = str(data_dir(args.data_dir))
    pretrained = resolve(args.model)
    tm = harness.task_manager(pretrained, args.data_dir)
    names = harness.match_tasks(args.tasks, tm)
    protocol = harness.data_protocol(args.data_dir)  # study: the study's token ids (genft.protocol_lm)
    cells = [(shots, name) for shots in args.shots for name in names]
    print(f"model {pretrained}; {len(names)} tasks x shots {args.shots} = {len(cells)} cells; limit {args.limit}; "
          f"data protocol {protocol}{'; dtype ' + args.dtype if args.dtype else ''}", flush=True)
    lm = harness.load_model(pretrained, args.backend, peft=args.peft, batch_size=args.batch_size, dtype=args.dtype,
                            dtype_setting="--dtype")
    rows, records, began = [], [], time.time()
    for i, (shots, name) in enumerate(cells, 1):
        start = time.time()
        r = harness.evaluate(lm, [name], num_fewshot=shots, limit=args.limit, pretrained=pretrained, tm=tm,
                             data_root=args.data_dir, protocol=protocol, log_samples=bool(args.output))
        per_item = {}
        if args.output:  # each item's results, and lm-eval's responses (log-likelihoods, raw generations)
            samples = sorted(r["samples"][name], key=lambda s: s["doc_id"])
            per_item = {**harness.per_item(harness.task_spec(name), samples),
                        "responses": [s.get("filtered_resps") for s in samples]}
        raw = r["results"][name]
        n, wall = raw.get("sample_len") or args.limit, time.time() - start
        r = {k.split(",")[0]: v for k, v in raw.items() if k.endswith(",none")}
        if "acc" in r:
            score = f"acc {r['acc']:.3f}  acc_first {r['acc_first']:.3f}"
        else:
            score = f"rougeL {r['rougeL']:.3f}"
        rows.append([name, shots, score, f"{wall:.0f}", f"{n / wall:.2f}" if n else ""])
        records.append({"task": name, "shots": shots, "n": n, "metrics": r, "wall_s": wall, **per_item})
        left = (time.time() - began) / i * (len(cells) - i)
        print(f"[{i}/{len(cells)}] {name} {shots}-shot: {score} ({wall:.0f}s, ~{left / 60:.0f} min left)", flush=True)
    print(tabulate(rows, headers=["task", "shots", "score", "seconds", "items/s"], tablefmt="github"))
    if args.output:  # through genft's one atomic write (an unpredictable temporary file, then a rename)
        write_json(Path(args.output), {"model": pretrained, "backend": args.backend, "dtype": args.dtype,
                                       "limit": args.limit, "protocol": protocol, "cells": records})
    return 0


def cmd_report(args) -> int:
    """Write the suite's markdown report, figures and evidence file (reports/<suite>.md, reports/<suite>/); or,
    with --compare, print which finding parts changed verdict between two judgements."""
    from .report import load_settings, write_report
    from .report.compare import compare, verdicts

    if args.compare:
        if args.suite or args.cells:
            print("genft: error: --compare takes its two sources itself (no suite, no --cells)", file=sys.stderr)
            return 2
        old = verdicts(args.compare[0], load_settings(args.old_settings) if args.old_settings else None)
        new = verdicts(args.compare[1], load_settings(args.settings) if args.settings else None)
        print(compare(old, new, everything=args.all), end="")
        return 0
    if bool(args.suite) == bool(args.cells):
        print("genft: error: give a suite (file or output folder) or --cells FILE, not both", file=sys.stderr)
        return 2
    from .report.tracking import TrackingError

    settings = load_settings(args.settings) if args.settings else None
    if args.cells and args.log_to == "tensorboard" and not args.log_dir:
        print("genft: error: --log-to tensorboard with --cells: give the folder for its event files (--log-dir)",
              file=sys.stderr)
        return 2
    try:
        print(write_report(args.cells or args.suite, out_dir=args.out_dir, settings=settings))
        log_results(args.cells or args.suite, args.log_to, args.log_dir)
    except TrackingError as e:
        print(f"genft: error: {e}", file=sys.stderr)
        return 2
    return 0


def log_results(source, tracker: str | None, log_dir: str | None) -> None:
    """Log the cells and findings to the tracker: `tracker` (--log-to), else the suite's report.log_to."""
    from pathlib import Path

    from .report.tracking import log_results as log_to_tracker
    from .report.write import load
    from .suite import output_of

    name, records, _, settings = load(source)
    tracker = tracker or (settings.log_to if settings else None)
    if tracker is None:
        return
    log_dir = log_dir or (settings.log_dir if settings else None)
    if log_dir is None and not str(source).endswith(".jsonl.gz"):
        log_dir = Path(output_of(source)) / "tensorboard"
    n = log_to_tracker(name, records, settings, tracker, log_dir)
    print(f"logged {n} cells and the findings to {tracker}{f' ({log_dir})' if log_dir else ''}")


def cmd_export(args) -> int:
    """Write a suite's cells (or, with --items, every test item) as a parquet, csv or jsonl table."""
    if bool(args.suite) == bool(args.cells):
        print("genft: error: give a suite (file or output folder) or --cells FILE, not both", file=sys.stderr)
        return 2
    from .report.export import ExportError, export
    from .report.write import load

    try:
        name, records, _, settings = load(args.cells or args.suite)
        path = export(name, records, settings, args.format, args.items, args.output)
    except ExportError as e:
        print(f"genft: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_suite_run(args) -> int:
    """Run the suite, then (unless --no-report or --dry-run) write its report from the store."""
    from .report import write_report
    from .report.stopping import make_decide
    from .suite import load_suite
    from .suite.run import run_suite

    from .report.tracking import TrackingError

    decide = make_decide(load_suite(args.suite).report)  # staged suites: stop cells once their parts are decided
    rc = run_suite(args.suite, dry_run=args.dry_run, executor=args.executor, decide=decide)
    if args.dry_run and args.pilot:
        cmd_suite_power(args)
    if not args.dry_run and not args.no_report:
        print(f"report: {write_report(args.suite)}")
        try:
            log_results(args.suite, None, None)
        except TrackingError as e:
            print(f"genft: error: {e}", file=sys.stderr)
            return 2
    return rc


def cmd_suite_power(args) -> int:
    """How precisely each finding part can be judged at the suite's size (before any compute is spent)."""
    from .report.power import power, render
    from .suite import load_suite

    suite = load_suite(args.suite)
    rows, note = power(suite, args.pilot)
    print(render(suite, rows, note), end="")
    return 0


def cmd_suite_keys(args) -> int:
    from .suite.schema import describe_keys

    print("\n".join(describe_keys()))
    return 0


def cmd_suite_validate(args) -> int:
    from .suite import load_suite

    s = load_suite(args.suite)
    print(f"{args.suite}: valid suite {s.name!r}: {len(s.models)} models, {len(s.runs)} fine-tuning runs, "
          f"{len(s.eval.test_sets)} test sets; output {s.output}")
    return 0


def _add_data_parsers(sub) -> None:
    """`genft data`: import-study, build-hub, builtin."""
    from .data.registry import STUDY_TRAIN_SIZES

    data = sub.add_parser("data", help="create data sets in the canonical layout").add_subparsers(dest="what", required=True)
    p = data.add_parser("import-study", help="import the study's released splits (downloads the pinned release "
                        "when no source is given; every file is checked against genft's sha256 sums)")
    p.add_argument("src", nargs="?", help="the release's data/ folder, its repository's .zip/.tar.gz archive, or an "
                   "http(s) URL of one (default: download LHRYANG/Generalization_of_FT-LLM at commit f3718fc)")
    p.add_argument("--protocol", choices=("clean", "study"), default="clean", help="clean: drop defective items "
                   "(default); study: the study's exact test data (first 250 items, defective items kept)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None, help="check the sha256 sums "
                   "(default: yes for downloads and archives, no for a folder)")
    _add_data_dir(p)
    p.set_defaults(func=cmd_data_import_study)
    p = data.add_parser("build-hub", help="build the study's data sets from the public hub data sets they come from")
    p.add_argument("sets", nargs="+", metavar="TASK/DATASET", help="e.g. summary/xsum; a task name (all its sets) "
                   "or 'all'")
    p.add_argument("--sizes", nargs="+", type=int, default=list(STUDY_TRAIN_SIZES),
                   help="nested training sizes of training sets (default: the study's, "
                        f"{' '.join(map(str, STUDY_TRAIN_SIZES))})")
    p.add_argument("--test-size", type=int, default=500, help="test items (default 500)")
    p.add_argument("--seed", type=int, default=42, help="the sampling seed, recorded in meta.json (default 42)")
    p.add_argument("--hub-dir", help="read local stand-ins DIR/<hub id with / as __>[/<config>]/<split>.jsonl "
                   "instead of the hub (default: $GENFT_HUB_DIR, else the hub)")
    p.add_argument("--revision", help="a hub revision (branch, tag or commit) for every set (default: each set's own)")
    p.add_argument("--replace", action="store_true", help="replace data sets that came from another source")
    _add_data_dir(p)
    p.set_defaults(func=cmd_data_build_hub)
    p = data.add_parser("builtin", help="write genft's small builtin data set (all five tasks, two domains each)")
    _add_data_dir(p)
    p.set_defaults(func=cmd_data_builtin)


def _add_model_parsers(sub) -> None:
    """`genft model prepare`."""
    model = sub.add_parser("model", help="provision models").add_subparsers(dest="what", required=True)
    p = model.add_parser("prepare", help="provision a named model and print its folder")
    p.add_argument("name", help="smollm2-135m, tiny, tiny-swa or swa-262k (random weights, for speed measurements)")
    p.set_defaults(func=cmd_model_prepare)


def _add_eval_parser(sub) -> None:
    """`genft eval`."""
    p = sub.add_parser("eval", help="evaluate one model on genft tasks and print the table")
    p.add_argument("--model", default="smollm2-135m",
                   help="a genft model name, a local model folder or a hub id (owner/name)")
    p.add_argument("--peft", help="a LoRA adapter folder on top of --model")
    p.add_argument("--tasks", nargs="+", default=["genft_builtin"], help="task names, tags or globs")
    p.add_argument("--shots", nargs="+", type=int, default=[0])
    p.add_argument("--limit", type=int, help="first N items of each test set")
    p.add_argument("--backend", default="genft-hf", help="lm-eval model type: genft-hf (default: the same scores "
                   "as hf, faster), hf, vllm")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "auto"),
                   help="weights dtype (default: transformers' float32); bfloat16 on a CPU needs native bf16 "
                   "(AVX512-BF16, AMX, ARM BF16) and is refused without it")
    p.add_argument("--output", help="also write the scores, and each item's (doc_ids, items, outputs, lm-eval's "
                   "responses), as JSON to this file")
    _add_data_dir(p)
    p.set_defaults(func=cmd_eval)


def _add_suite_parsers(sub) -> None:
    """`genft suite`: run, power, validate, keys."""
    suite = sub.add_parser("suite", help="run a whole transfer matrix from a suite file (resumable)").add_subparsers(
        dest="what", required=True)
    p = suite.add_parser("run", help="plan, fine-tune and evaluate what is missing, then write the report")
    p.add_argument("suite", help="a suite YAML file, e.g. suites/smoke.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate; do nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--pilot", help="with --dry-run: also print `genft suite power` with this evidence file's "
                   "per-item variances")
    p.add_argument("--executor", choices=("local", "ray", "slurm"), help="where units run (default: the suite's "
                   "executor.kind, else local)")
    p.set_defaults(func=cmd_suite_run)
    p = suite.add_parser("power", help="each finding part's precision at the suite's size: half-width, detectable "
                         "effect, whether it can be decided, items needed (plans only; loads no model)")
    p.add_argument("suite")
    p.add_argument("--pilot", help="an evidence file (reports/<suite>/cells.jsonl.gz) whose per-item variances to "
                   "use (default: genft's stated defaults)")
    p.set_defaults(func=cmd_suite_power)
    p = suite.add_parser("validate", help="check a suite file (loads no model, needs no data)")
    p.add_argument("suite")
    p.set_defaults(func=cmd_suite_validate)
    p = suite.add_parser("keys", help="every key of a suite file with its help (from the schema)")
    p.set_defaults(func=cmd_suite_keys)


def _add_report_parser(sub) -> None:
    """`genft report`."""
    p = sub.add_parser("report", help="write a suite's report: reports/<suite>.md and its figures")
    p.add_argument("suite", nargs="?", help="the suite: its file or its output folder")
    p.add_argument("--cells", help="rebuild from a report's evidence file (reports/<suite>/cells.jsonl.gz)")
    p.add_argument("--out-dir", default="reports", help="folder for the report (default: reports)")
    p.add_argument("--settings", metavar="SUITE|defaults", help="judge under the report settings of this suite "
                   "file's `report:` block (or genft's defaults) instead of the stored ones; with --compare: the "
                   "NEW side's")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="print the finding parts whose verdict "
                   "changed between two judgements: evidence files (*.jsonl.gz, judged now) or report markdown "
                   "(*.md, read as written)")
    p.add_argument("--old-settings", metavar="SUITE|defaults", help="with --compare: settings for the OLD side")
    p.add_argument("--all", action="store_true", help="with --compare: list unchanged parts too")
    p.add_argument("--log-to", choices=("tensorboard", "wandb", "mlflow", "trackio"), help="also log every cell's "
                   "metrics and the findings to this tracker (default: the suite's report.log_to, else none)")
    p.add_argument("--log-dir", help="the tracker's folder (tensorboard: default <suite output>/tensorboard)")
    p.set_defaults(func=cmd_report)


def _add_export_parser(sub) -> None:
    """`genft export`."""
    p = sub.add_parser("export", help="a suite's results as a table: one row per cell (or per item with --items)")
    p.add_argument("suite", nargs="?", help="the suite: its file or its output folder")
    p.add_argument("--cells", help="export from a report's evidence file (reports/<suite>/cells.jsonl.gz)")
    p.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet", help="default parquet")
    p.add_argument("--items", action="store_true", help="one row per test item of every cell")
    p.add_argument("--output", "-o", help="the file to write (default <suite>-cells.<format>, or -items)")
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The `genft` command line: one builder per subcommand (or group of them), in the order --help lists them."""
    parser = argparse.ArgumentParser(prog="genft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_data_parsers, _add_model_parsers, _add_eval_parser, _add_suite_parsers, _add_report_parser,
                _add_export_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    from .data import DataError
    from .models import ModelError
    from .precision import PrecisionError
    from .suite import StoreError, SuiteError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ModelError, SuiteError, StoreError, PrecisionError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"genft: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only, no permission, a missing file: one line (every write is atomic)
        print(f"genft: error: {describe_os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
