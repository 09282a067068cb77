"""``python -m training`` / ``cifar10-train``: train a CIFAR-10 model and export a SavedModel."""

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cpus import available_cpus
from training.augment import FLIP_MODES
from training.data import DatasetError, default_cache_dir
from training.recipes import DEFAULT_RECIPE, RECIPE_ALIASES, RECIPES, Recipe, recipe_name

RUNS_DIR = Path("runs")

if TYPE_CHECKING:
    from training.train import TrainConfig


class RenamedOption(argparse.Action):
    """A former option name, still accepted for one release: stores the value and names the new option."""

    def __init__(self, *args: Any, new_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new_name = new_name

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"note: {option_string} is now {self.new_name}; the old name will go in a later release",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def current_recipe_name(name: str) -> str:
    """argparse type of --recipe: a former recipe name becomes the current one, with a note."""
    if name in RECIPE_ALIASES:
        print(f"note: recipe {name} is now called {RECIPE_ALIASES[name]}", file=sys.stderr)
    try:
        return recipe_name(name)
    except KeyError:
        return name  # argparse's choices check names the valid recipes


def add_recipe_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--recipe NAME`` (also under its former name ``--arch``), taking former recipe names too."""
    former_names = ", ".join(f"{old} for {new}" for old, new in RECIPE_ALIASES.items())
    parser.add_argument("--recipe", type=current_recipe_name, choices=list(RECIPES), default=DEFAULT_RECIPE,
                        help=f"{help_text}. Former names still accepted: {former_names}")
    parser.add_argument("--arch", dest="recipe", type=current_recipe_name, choices=list(RECIPES),
                        action=RenamedOption, new_name="--recipe", help="former name of --recipe")


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: not when its help already states it, nor when there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or no_default:
            return text
        return super()._get_help_string(action)


def recipe_defaults(recipe: Recipe) -> str:
    """Its epochs and batch size, the batch size unless its description already gives it."""
    batch = f"batch {recipe.batch_size}"
    return f"{recipe.epochs} epochs" + ("" if batch in recipe.description else f", {batch}")


def build_parser() -> argparse.ArgumentParser:
    recipe_help = "; ".join(f"{name}: {recipe.description} ({recipe_defaults(recipe)})"
                            for name, recipe in RECIPES.items())
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a CIFAR-10 classifier into a run folder (runs/<recipe>-<UTC time>/: the SavedModel "
        "with metadata.json and report/ in model/, checkpoints, history.csv). The served models are never "
        "touched: `python -m training promote RUN_DIR` checks a run and publishes it as the next version "
        "of models/cifar10 (see `python -m training promote --help`).",
        formatter_class=DefaultsOnceFormatter,
    )
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageFolder dataset: a directory or .tar.gz/.tgz/.tar/.zip archive holding "
                        "train/<class>/* and optionally test/<class>/*. Default: download CIFAR-10 "
                        "with keras.datasets.cifar10 (train and test splits).")
    add_recipe_option(parser, recipe_help)
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and shuffling")
    parser.add_argument("--val-size", type=int, default=None,
                        help="validation images held out from train, stratified (default: 5000, or 10%% of "
                        "a smaller dataset)")
    parser.add_argument("--out", type=Path, default=None,
                        help="export straight into this model folder as its next integer version, without "
                        "promote's checks (default: into the run folder, RUN_DIR/model)")
    parser.add_argument("--threads", type=int, default=available_cpus(),
                        help="TensorFlow intra- and inter-op threads (default: the CPUs this process may use)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where decoded ImageFolder arrays are cached, keyed by the data's hash")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the dataset without reading or writing the cache")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="the run folder: checkpoints, history.csv and (without --out) the export "
                        "(default: a new runs/<recipe>-<UTC time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last epoch checkpoint instead of starting over")
    parser.add_argument("--quiet", action="store_true", help="no per-step progress bar, one line per epoch")
    distilling = parser.add_argument_group("distillation and one-off changes (the ablation in docs/training.md)")
    distilling.add_argument("--teacher", type=Path, default=None,
                            help="a model version folder (e.g. models/cifar10/4) whose probabilities the student "
                            "learns as well as the labels; required by recipes that distill")
    distilling.add_argument("--distill-weight", type=float, default=None,
                            help="the teacher's share of each target, 0-1 (default: the recipe's)")
    distilling.add_argument("--distill-temperature", type=float, default=None,
                            help="softens (>1) or sharpens (<1) the teacher's probabilities (default: the recipe's)")
    distilling.add_argument("--flip", choices=FLIP_MODES, default=None,
                            help="mirror images at random each epoch, in alternating epochs, or never "
                            "(default: the recipe's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["promote"]:
        from training import promote

        return promote.main(argv[1:])
    args = build_parser().parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--threads", args.threads), ("--val-size", args.val_size)):
        if value is not None and value < 1:
            print(f"error: {flag} must be a positive integer, got {value}", file=sys.stderr)
            return 2
    if args.distill_weight is not None and not 0 <= args.distill_weight <= 1:
        print(f"error: --distill-weight must be between 0 and 1, got {args.distill_weight}", file=sys.stderr)
        return 2
    if args.distill_temperature is not None and args.distill_temperature <= 0:
        print(f"error: --distill-temperature must be positive, got {args.distill_temperature}", file=sys.stderr)
        return 2
    if args.resume and args.run_dir is None:
        print("error: --resume continues a run: name its folder with --run-dir (the runs/<recipe>-<time> "
              "folder the interrupted run printed)", file=sys.stderr)
        return 2
    from training.distill import TeacherError
    from training.train import train

    config = config_from_args(args)
    try:
        train(config)
    except (DatasetError, TeacherError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: resume with the same options plus --resume --run-dir {config.run_dir}",
              file=sys.stderr)
        return 130
    return 0


def config_from_args(args: argparse.Namespace) -> "TrainConfig":
    from training.train import TrainConfig

    return TrainConfig(
        recipe=args.recipe,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        val_size=args.val_size,
        threads=args.threads,
        cache_dir=None if args.no_cache else args.cache_dir,
        run_dir=args.run_dir or new_run_dir(args.recipe),
        resume=args.resume,
        verbose=2 if args.quiet else 1,
        teacher=args.teacher,
        recipe_changes={key: value for key, value in (("flip", args.flip), ("distill_weight", args.distill_weight),
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
