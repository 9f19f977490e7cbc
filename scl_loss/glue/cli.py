"""``scl-glue`` / ``python -m scl_loss.glue``: split, run, report, merge, augment.

See ``docs/glue.md`` for the protocol and the commands that produce the paper's tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from scl_loss.glue.tasks import TASKS, get_task

__all__ = ["build_parser", "main"]

LAMBDAS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
TAUS = [0.1, 0.3, 0.5, 0.7]
EPOCHS = {"full": 3, "fewshot": 10}  # default epochs by regime


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (default: the hub, nyu-mll/glue)")
    g.add_argument("--data-dir", help="a task folder in GLUE layout or with CSV/JSON/JSONL files")
    g.add_argument("--data-root", help="a folder of task folders named as in GLUE (SST-2, CoLA, ..., yelp-2)")
    g.add_argument("--train-file", help="training file (name inside the task folder, or a path)")
    g.add_argument("--eval-file", help="the GLUE validation file (name inside the task folder, or a path)")
    g.add_argument("--hub-dataset", help="hub dataset instead of the task's default (nyu-mll/glue)")
    g.add_argument(
        "--train-from-eval",
        action="store_true",
        help="draw few-shot samples from the eval-file rows outside test and validation (no train file)",
    )


def _source(args: argparse.Namespace) -> object:
    from scl_loss.glue.data import DataSource

    if args.data_dir and args.data_root:
        raise SystemExit("error: give --data-dir or --data-root, not both")
    return DataSource(
        args.data_dir, args.data_root, args.train_file, args.eval_file, args.hub_dataset, args.train_from_eval
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scl-glue", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tasks = sorted(TASKS)

    p = sub.add_parser("split", help="write the protocol's test/validation/training indices as JSON")
    p.add_argument("--task", required=True, choices=tasks)
    _add_data_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation-size", type=int, default=500)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shots", type=int, help="few-shot N (stratified by the training label distribution)")
    size.add_argument("--per-class", type=int, help="examples per class (transfer: 20)")
    p.add_argument("--samples", type=int, default=10, help="number of training samples (default 10)")
    p.add_argument("--out", required=True, help="JSON file to write")

    p = sub.add_parser("run", help="train one run or a whole grid; results go to a journal")
    p.add_argument("--config", help='JSON file of option defaults, e.g. {"tasks": ["sst2"], "shots": [20]}')
    p.add_argument("--tasks", "--task", nargs="+", choices=tasks, default=None)
    _add_data_options(p)
    p.add_argument(
        "--model", default="roberta-large", help="hub name or local folder (default roberta-large)"
    )
    p.add_argument("--regime", choices=["full", "fewshot"], default="fewshot")
    p.add_argument("--shots", nargs="+", type=int, default=[20], help="few-shot N values (default 20)")
    p.add_argument("--per-class", type=int, help="few-shot with this many examples per class instead of N")
    p.add_argument("--samples", type=int, default=10, help="few-shot training samples per N (default 10)")
    p.add_argument("--seeds", type=int, default=10, help="full data: seeds per combination (default 10)")
    p.add_argument("--seed", type=int, default=0, help="base seed: run k uses seed + k")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the test/validation/sample split")
    p.add_argument("--split", help="use this split JSON (from `split`) instead of computing it")
    p.add_argument("--validation-size", type=int, default=500)
    p.add_argument("--lambdas", nargs="*", type=float, default=LAMBDAS)
    p.add_argument("--taus", nargs="*", type=float, default=TAUS)
    p.add_argument("--no-ce", action="store_true", help="leave the CE-only baseline out of the grid")
    p.add_argument("--ce-only", action="store_true", help="only the CE baseline")
    p.add_argument("--init-from", help="start from this fine-tuned model folder (transfer, Table 7)")
    p.add_argument("--augment", help="JSONL of paraphrases (from `augment`) to add to the training rows")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, default=1e-5)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--epochs", type=int, help="maximum epochs (default: 3 full data, 10 few-shot)")
    t.add_argument("--warmup-ratio", type=float, default=0.0)
    t.add_argument("--max-length", type=int, default=128)
    t.add_argument("--patience", type=int, default=3, help="early stopping patience in evaluations; 0: none")
    t.add_argument("--evals-per-epoch", type=int, default=1)
    t.add_argument("--eval-batch-size", type=int, default=64)
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--scl-reduction", choices=["mean", "sum"], default="mean")
    e = p.add_argument_group("execution")
    e.add_argument("--journal", default="results/journal.jsonl")
    e.add_argument(
        "--shard", help="i/n: run every n-th run starting at i (default: torchrun RANK/WORLD_SIZE)"
    )
    e.add_argument(
        "--data-parallel",
        action="store_true",
        help="under torchrun: train each run on all ranks, each taking its share of every batch "
        "(DDP, SCL over the global batch) instead of sharding the runs",
    )
    e.add_argument("--device", help="default: cuda[:LOCAL_RANK] if available, else cpu")
    e.add_argument("--threads", type=int, help="torch CPU threads")
    e.add_argument("--max-runs", type=int, help="stop after this many new runs")
    e.add_argument("--save-model", help="folder to save each run's selected model in")
    e.add_argument("--save-embeddings", help="folder to save each run's test-set Φ in (for the tSNE figures)")
    e.add_argument("--list", action="store_true", help="print the planned runs and exit")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("report", help="journal(s) → Markdown/CSV tables and tSNE figures")
    p.add_argument("journals", nargs="+")
    p.add_argument("--out", default="results/report")
    p.add_argument("--no-figures", action="store_true")

    p = sub.add_parser("merge", help="merge journals (one record per run)")
    p.add_argument("journals", nargs="+")
    p.add_argument("--out", required=True)

    p = sub.add_parser("augment", help="back-translate training rows (en→de→en) into noisy paraphrases")
    p.add_argument("--task", required=True, choices=tasks)
    _add_data_options(p)
    p.add_argument(
        "--split", help="paraphrase only the rows of this split's train_samples (default: all rows)"
    )
    p.add_argument("--temperatures", nargs="+", type=float, default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--copies", type=int, default=3, help="paraphrases per example (1:3 in the paper)")
    p.add_argument("--en-de", default="Helsinki-NLP/opus-mt-en-de", help="local folder or cached hub name")
    p.add_argument("--de-en", default="Helsinki-NLP/opus-mt-de-en", help="local folder or cached hub name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder: one augmented-T<temperature>.jsonl per T")
    return parser


def _cmd_split(args: argparse.Namespace) -> int:
    from scl_loss.glue.data import load_task_data, make_split, split_to_json

    task = get_task(args.task)
    data = load_task_data(task, _source(args))  # type: ignore[arg-type]
    split = make_split(
        data,
        args.seed,
        validation_size=args.validation_size,
        shots=args.shots,
        per_class=args.per_class,
        samples=args.samples,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(split_to_json(task, args.seed, split, data)) + "\n", encoding="utf-8")
    print(
        f"{task.display}: test {len(split.test)}, validation {len(split.validation)}, "
        f"{len(split.train_samples)} training samples -> {out}"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from scl_loss.glue.grid import GridConfig, expand_grid
    from scl_loss.glue.runner import ExecuteOptions, default_device, execute, parse_shard
    from scl_loss.glue.training import TrainSettings

    if not args.tasks:
        raise SystemExit('error: give --tasks (or a --config with "tasks")')
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings(
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs or EPOCHS[args.regime],
        warmup_ratio=args.warmup_ratio,
        max_length=args.max_length,
        patience=args.patience or None,
        evals_per_epoch=args.evals_per_epoch,
        eval_batch_size=args.eval_batch_size,
        dropout=args.dropout,
        scl_reduction=args.scl_reduction,
    )
    config = GridConfig(
        tasks=args.tasks,
        source=_source(args),
        model=args.model,
        regime=args.regime,
        shots=args.shots,  # type: ignore[arg-type]
        per_class=args.per_class,
        samples=args.samples,
        seeds=args.seeds,
        base_seed=args.seed,
        split_seed=args.split_seed,
        split_file=args.split,
        validation_size=args.validation_size,
        include_ce=not args.no_ce,
        lambdas=[] if args.ce_only else args.lambdas,
        taus=[] if args.ce_only else args.taus,
        init_from=args.init_from,
        augment=args.augment,
        settings=settings,
    )
    if args.list:
        for spec in expand_grid(config):
            print(
                json.dumps(
                    {
                        k: spec[k]
                        for k in ("task", "regime", "shots", "per_class", "sample", "loss", "lambda", "tau")
                    }
                )
            )
        return 0
    device = torch.device(args.device) if args.device else default_device()
    world = None
    if args.data_parallel:
        from scl_loss.glue.parallel import init_from_torchrun

        if args.shard:
            raise SystemExit("error: --data-parallel runs every run on every rank; drop --shard")
        world = init_from_torchrun(device)
    options = ExecuteOptions(
        journal=Path(args.journal),
        shard=(0, 1) if world else parse_shard(args.shard),
        device=device,
        max_runs=args.max_runs,
        save_model=args.save_model,
        save_embeddings=args.save_embeddings,
        progress=not args.quiet,
        world=world,
    )
    try:
        stats = execute(config, options)
    except KeyboardInterrupt:
        print(
            f"interrupted: finished runs are in {args.journal}; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        if world is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if not options.is_main:
        return 0
    print(f"done: {stats['finished']} new runs, {stats['skipped']} skipped, journal {args.journal}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from scl_loss.glue.journal import merge_journals
    from scl_loss.glue.report import write_report

    records = merge_journals(args.journals)
    if not records:
        raise SystemExit(f"error: no records in {', '.join(args.journals)}")
    written = write_report(records, args.out, figures=not args.no_figures)
    print(Path(written["markdown"]).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from scl_loss.glue.journal import append_record, merge_journals

    records = merge_journals(args.journals)
    added = sum(append_record(args.out, r) for r in records)
    print(f"{added} records added to {args.out} ({len(records)} distinct runs read)")
    return 0


def _cmd_augment(args: argparse.Namespace) -> int:
    from scl_loss.glue.augment import augment_rows, marian_translator, write_augmented
    from scl_loss.glue.data import load_task_data, read_split

    task = get_task(args.task)
    data = load_task_data(task, _source(args))  # type: ignore[arg-type]
    if data.train is None:
        raise SystemExit(f"error: {task.display} has no training file (pass --train-file)")
    if args.split:
        rows = sorted({r for sample in read_split(args.split, task).train_samples for r in sample})
    else:
        rows = list(range(len(data.train)))
    forward = marian_translator(args.en_de, device=args.device)
    backward = marian_translator(args.de_en, device=args.device)
    for temperature in args.temperatures:
        items = augment_rows(
            data.train,
            rows,
            forward=forward,
            backward=backward,
            temperature=temperature,
            copies=args.copies,
            seed=args.seed,
        )
        target = Path(args.out) / f"augmented-T{temperature:g}.jsonl"
        write_augmented(target, items)
        print(f"T={temperature:g}: {len(items)} paraphrases of {len(rows)} rows -> {target}")
    return 0


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting ``run --config FILE`` supply defaults (command-line options still win)."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        values = json.loads(Path(args.config).read_text(encoding="utf-8"))
        if not isinstance(values, dict):
            raise SystemExit(f"error: {args.config}: expected a JSON object of option names")
        known = vars(args)
        unknown = sorted(k for k in values if k.replace("-", "_") not in known)
        if unknown:
            raise SystemExit(f"error: {args.config}: unknown options {unknown}")
        run_parser = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["run"]  # type: ignore[union-attr]
        run_parser.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _apply_config(parser, argv)
    commands = {
        "split": _cmd_split,
        "run": _cmd_run,
        "report": _cmd_report,
        "merge": _cmd_merge,
        "augment": _cmd_augment,
    }
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as err:  # bad data or options: the message says what and where
        print(f"scl-glue {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
