"""``scl-glue`` / ``python -m scl_loss.glue``: split, run, report, merge, augment (docs/glue.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_type_hints

from transformers import HfArgumentParser

from scl_loss.glue.arguments import (
    AugmentArguments,
    DataArguments,
    MergeArguments,
    ReportArguments,
    RunArguments,
    SampleArguments,
    SplitArguments,
)

__all__ = ["main", "parse"]


def parse(types: Sequence[Any], argv: Sequence[str], prog: str = "scl-glue") -> tuple[Any, ...]:
    """``argv`` into one instance of each dataclass of ``types``; a ``--config`` JSON/YAML file
    (an option of ``ExecutionArguments``) supplies defaults that command-line options override."""
    parser = HfArgumentParser(types, prog=prog, description=types[0].__doc__)
    config = getattr(parser.parse_known_args(list(argv))[0], "config", None)
    if config:
        text = Path(config).read_text(encoding="utf-8")
        if Path(config).suffix in (".yaml", ".yml"):
            import yaml  # a dependency of transformers

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
        if not isinstance(values, dict):
            raise SystemExit(f"error: {config}: expected a mapping of option names to values")
        known = {f.name for t in types for f in dataclasses.fields(t)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"error: {config}: unknown options {unknown}")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(list(argv), look_for_args_file=False)


def _split(split: SplitArguments, sample: SampleArguments, data: DataArguments) -> int:
    from scl_loss.glue.data import load_task_data, make_split, split_to_json
    from scl_loss.glue.tasks import get_task

    if len(sample.shots) > 1:
        raise ValueError(f"shots must be one N for `split` (one file per N), got {sample.shots}")
    task = get_task(split.task)
    loaded = load_task_data(task, data)
    drawn = make_split(loaded, sample, sample.shots[0])
    out = Path(split.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(split_to_json(task, sample.split_seed, drawn, loaded)) + "\n", encoding="utf-8")
    print(
        f"{task.display}: test {len(drawn.test)}, validation {len(drawn.validation)}, "
        f"{len(drawn.train_samples)} training samples -> {out}"
    )
    return 0


def _run(*parsed: Any) -> int:
    import datasets
    from transformers.utils import logging as hf_logging

    from scl_loss.glue.grid import expand_grid
    from scl_loss.glue.runner import execute

    args = RunArguments(*parsed)
    if args.execution.list_runs:
        for spec in expand_grid(args):
            keep = ("task", "regime", "shots", "per_class", "sample", "seed", "loss", "lambda", "tau")
            print(json.dumps({k: spec[k] for k in keep}))
        return 0
    datasets.disable_progress_bars()
    # Noise, not news: the Trainer's pin_memory default on a machine without a GPU, and
    # EarlyStoppingCallback's note that it does not load the best model (BestEpoch does).
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true.*")
    hf_logging.get_logger("transformers.trainer_callback").setLevel(hf_logging.ERROR)
    try:
        stats = execute(args)
    except KeyboardInterrupt:
        print(f"interrupted: finished runs are in {args.execution.journal}; rerun to resume", file=sys.stderr)
        return 130
    if args.training.process_index == 0:
        print(f"done: {stats.finished} new runs, {stats.skipped} skipped, journal {args.execution.journal}")
    return 0


def _report(args: ReportArguments) -> int:
    from scl_loss.glue.journal import merge_journals
    from scl_loss.glue.report import write_report

    records = merge_journals(args.journals)
    if not records:
        raise ValueError(f"journals hold no records: {', '.join(args.journals)}")
    written = write_report(records, args.out, figures=args.figures)
    print(Path(written["markdown"]).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def _merge(args: MergeArguments) -> int:
    from scl_loss.glue.journal import append_record, merge_journals

    records = merge_journals(args.journals)
    added = sum(append_record(args.out, r) for r in records)
    print(f"{added} records added to {args.out} ({len(records)} distinct runs read)")
    return 0


def _augment(args: AugmentArguments, data: DataArguments) -> int:
    from scl_loss.glue.augment import augment_rows, marian_translator, write_augmented
    from scl_loss.glue.data import load_task_data, read_split
    from scl_loss.glue.tasks import get_task

    task = get_task(args.task)
    train = load_task_data(task, data).train
    if train is None:
        raise ValueError(f"{task.display} has no training file (pass --train_file)")
    if args.split:
        rows = sorted({r for sample in read_split(args.split, task).train_samples for r in sample})
    else:
        rows = list(range(len(train)))
    forward = marian_translator(args.en_de, device=args.device)
    backward = marian_translator(args.de_en, device=args.device)
    for temperature in args.temperatures:
        options = {"temperature": temperature, "copies": args.copies, "seed": args.seed}
        items = augment_rows(train, rows, forward=forward, backward=backward, **options)
        target = Path(args.out) / f"augmented-T{temperature:g}.jsonl"
        write_augmented(target, items)
        print(f"T={temperature:g}: {len(items)} paraphrases of {len(rows)} rows -> {target}")
    return 0


# Each command: its option dataclasses (the first one's docstring is the command's summary) and handler.
COMMANDS: dict[str, tuple[tuple[Any, ...], Callable[..., int]]] = {
    "split": ((SplitArguments, SampleArguments, DataArguments), _split),
    "run": (tuple(get_type_hints(RunArguments).values()), _run),
    "report": ((ReportArguments,), _report),
    "merge": ((MergeArguments,), _merge),
    "augment": ((AugmentArguments, DataArguments), _augment),
}


def main(argv: Sequence[str] | None = None) -> int:
    about = "The GLUE protocol of Gunel et al. (2020) on SCLTrainer; docs/glue.md has the paper's commands."
    top = argparse.ArgumentParser(
        prog="scl-glue", description=about, epilog="scl-glue COMMAND --help: its options"
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (types, _) in COMMANDS.items():
        summary = types[0].__doc__.split(": ", 1)[-1]
        commands.add_parser(name, help=summary, add_help=False)  # the command's own parser has --help
    known, rest = top.parse_known_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
    types, handler = COMMANDS[known.command]
    try:
        return handler(*parse(types, rest, prog=f"scl-glue {known.command}"))
    except (ValueError, FileNotFoundError) as err:  # bad data or options: the message says what and where
        print(f"scl-glue {known.command}: error: {err}", file=sys.stderr)
        return 2
