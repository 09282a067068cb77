"""``python -m training COMMAND``: the training command line, one subcommand per job, one help style.

Each subcommand calls one plain function (``train``, ``promote``, ``reexport``, ``regenerate_report``)
that raises :class:`training.errors.TrainingError` for what its user can fix; here that becomes one
``error:`` line and exit status 1. Usage errors exit 2 (argparse's), an interrupted training run 130.
"""

import argparse
import datetime as dt
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from core.contract import LEVEL_NAMES
from core.cpus import available_cpus
from training.augment import FLIP_MODES
from training.data import default_cache_dir
from training.errors import TrainingError
from training.evaluation import TIMING_SECONDS
from training.promote import promote
from training.publish import DEFAULT_MODEL_ROOT
from training.recipes import DEFAULT_RECIPE, RECIPES, Recipe
from training.reexport import reexport
from training.regenerate_report import regenerate_report
from training.reports import REPORT_DIR
from training.train import TrainConfig, train

RUNS_DIR = Path("runs")
# Each subcommand: its one-line summary (the top-level help lists it) and what more its own --help says.
HELP: dict[str, tuple[str, str]] = {
    "train": (
        "Train a CIFAR-10 classifier into a run folder",
        "The run folder (runs/<recipe>-<UTC time>/) holds the SavedModel with metadata.json and report/ in "
        "model/, checkpoints and history.csv. The served models are never touched: `python -m training promote "
        "RUN_DIR` checks a run and publishes it."),
    "promote": (
        "Publish a finished training run as the next served version",
        "Checks the export contract, runs the model on a few images, refuses a validation accuracy below the "
        "served version's unless --force, and publishes a copy atomically (an existing version is never "
        "changed)."),
    "reexport": (
        "Write an exported version's weights again through today's export path",
        "No training: the weights are read back, the validation split rebuilt from the data, and every level "
        "calibrated, written, evaluated and reported as a new version. Nothing is written unless the new "
        "default level answers as the source does, nor, unless --force, when it was less accurate than the "
        "version the target folder serves."),
    "report": (
        f"Draw an exported version's {REPORT_DIR}/ again",
        "Re-evaluates it on the validation split its metadata.json records (same data, checked by sha256), "
        "checks the recorded accuracy, and redraws the pictures and tables with today's code."),
}
COMMANDS = tuple(HELP)


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: not when its help already states it, nor when there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or no_default:
            return text
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(f"name a command: {', '.join(COMMANDS)} (e.g. `python -m training train --help`)")
    try:
        return args.run(args)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a disk full or a folder made read-only while it ran: one line, not a traceback
        print(f"error: {error.filename or 'a file'}: {error.strerror or error}. Free space or fix the folder's "
              "permissions, then run the command again (train: with --resume).", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train CIFAR-10 classifiers and publish them to the service's model folder. A training "
        "run never touches the served models: `train` writes a run folder, `promote` checks it and publishes "
        "it as the next version of models/cifar10.",
        formatter_class=DefaultsOnceFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for add in (add_train, add_promote, add_reexport, add_report):
        add(commands)
    return parser


def subcommand(commands: argparse._SubParsersAction, name: str,
               run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    summary, description = HELP[name]
    parser = commands.add_parser(name, help=summary, description=f"{summary}. {description}",
                                 formatter_class=DefaultsOnceFormatter)
    parser.set_defaults(run=run, parser=parser)
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # inf would never end a timing loop; nan fails every comparison
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value:g}")
    return value


def writable_folder(text: str) -> Path:
    """A folder the command will write into: refused now, before minutes of work, if it is a file or cannot be
    made or written (the nearest folder that exists decides)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder: name a folder (it may not exist yet)")
    existing = next(folder for folder in (path, *path.absolute().parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path} cannot be written: {existing} is not a folder this user may "
                                         "write into; name another")
    return path


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def add_recipe_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE, help=help_text)


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=available_cpus(),
                        help="TensorFlow intra- and inter-op threads (default: the CPUs this process may use)")


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=writable_folder, default=default_cache_dir(),
                        help="where decoded ImageFolder arrays and a teacher's probabilities are cached, keyed by "
                             "their content (--no-cache: a teacher's go in the run folder)")


def add_timing_seconds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timing-seconds", type=positive_float, default=TIMING_SECONDS,
                        help="seconds timing each level, precision and batch size for metadata.json's speed "
                             "figures (shorter: a quicker export, noisier figures)")


def add_exported_version(parser: argparse.ArgumentParser) -> None:
    """VERSION_DIR and the --data it was trained on: what reexport and report read back."""
    parser.add_argument("version_dir", type=Path, metavar="VERSION_DIR",
                        help="an exported version directory, e.g. models/cifar10/3")
    parser.add_argument("--data", type=Path, default=None,
                        help="the ImageFolder dataset it was trained on (its sha256 must match its metadata.json); "
                        "omitted for a model trained on keras.datasets.cifar10")


def recipe_defaults(recipe: Recipe) -> str:
    """Its epochs and batch size, the batch size unless its description already gives it."""
    batch = f"batch {recipe.batch_size}"
    return f"{recipe.epochs} epochs" + ("" if batch in recipe.description else f", {batch}")


# --- train ---------------------------------------------------------------------------------------------

def add_train(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "train", run_train)
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageFolder dataset: a directory or .tar.gz/.tgz/.tar/.zip archive holding "
                        "train/<class>/* and optionally test/<class>/*. Default: download CIFAR-10 "
                        "with keras.datasets.cifar10 (train and test splits).")
    add_recipe_option(parser, "; ".join(f"{name}: {recipe.description} ({recipe_defaults(recipe)})"
                                        for name, recipe in RECIPES.items()))
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs to train (default: the recipe's)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for initialisation and shuffling, and for the validation split unless --split-seed")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="seed for the validation split alone (default: --seed): runs of other --seed and "
                        "the same --split-seed are measured on the same validation images, a seed's noise")
    parser.add_argument("--val-size", type=positive_int, default=None,
                        help="validation images held out from train, stratified (default: 5000, or 10%% of "
                        "a smaller dataset)")
    parser.add_argument("--out", type=writable_folder, default=None,
                        help="export straight into this model folder as its next integer version, without "
                        "promote's checks (default: into the run folder, RUN_DIR/model)")
    add_threads(parser)
    add_cache_dir(parser)
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the dataset without reading or writing the cache")
    parser.add_argument("--run-dir", type=writable_folder, default=None,
                        help="the run folder: checkpoints, history.csv and (without --out) the export "
                        "(default: a new runs/<recipe>-<UTC time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last epoch checkpoint instead of starting over")
    parser.add_argument("--quiet", action="store_true", help="no per-step progress bar, one line per epoch")
    add_timing_seconds(parser)
    distilling = parser.add_argument_group("distillation and one-off changes (the ablation in docs/training.md)")
    distilling.add_argument("--teacher", type=Path, action="append", dest="teachers", default=[],
                            help="a model version folder (e.g. models/cifar10/4) whose probabilities the student "
                            "learns as well as the labels; required by recipes that distill; given more than once, "
                            "the student learns the teachers' average (an ensemble)")
    distilling.add_argument("--distill-weight", type=share, default=None,
                            help="the teacher's share of each target, 0-1 (default: the recipe's)")
    distilling.add_argument("--distill-temperature", type=positive_float, default=None,
                            help="softens (>1) or sharpens (<1) the teacher's probabilities (default: the recipe's)")
    distilling.add_argument("--widths", type=positive_int, nargs=3, metavar=("GROUP1", "GROUP2", "GROUP3"),
                            default=None, help="channels of an airbench network's three conv groups, e.g. 128 384 "
                            "384 (default: the recipe's)")
    distilling.add_argument("--flip", choices=FLIP_MODES, default=None,
                            help="mirror images at random each epoch, in alternating epochs, or never "
                            "(default: the recipe's)")
    distilling.add_argument("--label-smoothing", type=share, default=None,
                            help="the share of each target spread evenly over the ten classes, 0-1; it smooths "
                            "the teacher's answers too (default: the recipe's)")


def run_train(args: argparse.Namespace) -> int:
    if args.resume and args.run_dir is None:
        args.parser.error("--resume continues a run: name its folder with --run-dir (the runs/<recipe>-<time> "
                          "folder the interrupted run printed)")
    config = config_from_args(args)
    try:
        train(config)
    except KeyboardInterrupt:
        print(f"interrupted: resume with the same options plus --resume --run-dir {config.run_dir}",
              file=sys.stderr)
        return 130
    return 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        recipe=args.recipe,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        split_seed=args.split_seed,
        val_size=args.val_size,
        threads=args.threads,
        cache_dir=None if args.no_cache else args.cache_dir,
        run_dir=args.run_dir or new_run_dir(args.recipe),
        resume=args.resume,
        verbose=2 if args.quiet else 1,
        timing_seconds=args.timing_seconds,
        teachers=tuple(args.teachers),
        recipe_changes={key: value for key, value in (
            ("widths", None if args.widths is None else tuple(args.widths)), ("flip", args.flip),
            ("label_smoothing", args.label_smoothing), ("distill_weight", args.distill_weight),
            ("distill_temperature", args.distill_temperature)) if value is not None},
    )


def new_run_dir(recipe: str) -> Path:
    """``runs/<recipe>-<UTC time>``, a name no earlier run has (runs/ is git-ignored)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RUNS_DIR / f"{recipe}-{stamp}"
    suffix = 2
    while path.exists():
        path, suffix = RUNS_DIR / f"{recipe}-{stamp}-{suffix}", suffix + 1
    return path


# --- promote -------------------------------------------------------------------------------------------

def add_promote(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "promote", run_promote)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="the run folder a training run printed (runs/<recipe>-<time>/), or an export folder")
    parser.add_argument("--to", type=writable_folder, default=DEFAULT_MODEL_ROOT, dest="model_root",
                        help="the served model folder; the run becomes its next integer version")
    parser.add_argument("--force", action="store_true",
                        help="publish even if its validation accuracy is below the served version's")


def run_promote(args: argparse.Namespace) -> int:
    promotion = promote(args.run_dir, args.model_root, args.force)
    before = ("" if promotion.served is None else
              f"; version {promotion.served[0]} had {promotion.served[1]:.2%}")
    print(f"published {promotion.version_dir} (validation accuracy {promotion.val_accuracy:.2%}{before}). "
          f"A service serving {args.model_root} loads it within MODEL_POLL_SECONDS, or at its next start.")
    return 0


# --- reexport ------------------------------------------------------------------------------------------

def add_reexport(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "reexport", run_reexport)
    add_exported_version(parser)
    parser.add_argument("--out", type=writable_folder, default=None,
                        help="model folder for the new version (default: VERSION_DIR's parent)")
    add_threads(parser)
    add_cache_dir(parser)
    add_timing_seconds(parser)
    parser.add_argument("--default-level", choices=LEVEL_NAMES, default=None,
                        help="the level the new version serves by default (default: VERSION_DIR's own)")
    parser.add_argument("--force", action="store_true",
                        help="publish even if the new default level's validation accuracy is below the served "
                             "version's in the target folder")
    parser.add_argument("--keep-precisions", action="store_true",
                        help="serve each level in the precisions VERSION_DIR chose by timing on its CPU (accuracy "
                             "checked here) instead of timing them here: for a CPU without bfloat16")


def run_reexport(args: argparse.Namespace) -> int:
    reexport(args.version_dir, args.data, args.out or args.version_dir.parent, args.cache_dir, args.threads,
             args.timing_seconds, args.default_level, args.force, args.keep_precisions)
    return 0


# --- report --------------------------------------------------------------------------------------------

def add_report(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "report", run_report)
    add_exported_version(parser)
    add_cache_dir(parser)


def run_report(args: argparse.Namespace) -> int:
    accuracy = regenerate_report(args.version_dir, args.data, args.cache_dir)
    print(f"wrote {args.version_dir / REPORT_DIR}/ (validation accuracy {accuracy:.2%}, as recorded)")
    return 0
