"""The training command as a user runs it: subcommands, help, errors, resume, run folders and their promotion."""

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from core.contract import METADATA_FILE, SAVED_MODEL_FILE, version_dirs
from tests.model_versions import write_model
from tests.synthetic import write_image_folder
from tests.test_promote import tree_digest
from training.cli import COMMANDS, build_parser, config_from_args, main
from training.errors import TrainingError
from training.evaluation import TIMING_SECONDS
from training.recipes import RECIPES
from training.train import (
    EpochTimer,
    TrainConfig,
    check_run_data,
    check_run_options,
    keep_run_options,
    load_splits,
)

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, **env: str) -> dict:
    """``subprocess`` arguments that run ``python -m training ARGS`` with ``env`` added to this environment."""
    # PYTHONPATH: run from another folder, the command is still this checkout's, not an installed copy's.
    return {"args": [sys.executable, "-m", "training", *args], "env": {**os.environ, "PYTHONPATH": str(REPO), **env}}


def run_cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(**cli(*args, **env), capture_output=True, text=True, timeout=600, check=False, cwd=cwd)


def test_every_subcommand_is_listed_and_none_is_an_error_naming_them(capsys: pytest.CaptureFixture) -> None:
    listed = run_cli("--help")
    assert listed.returncode == 0 and listed.stderr == ""  # no TensorFlow notices after (or before) the help
    for command in COMMANDS:
        assert f"\n    {command} " in listed.stdout, listed.stdout
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m training {command} ")
    bare = run_cli()
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    assert "name a command: train, promote, reexport, report" in bare.stderr


def test_train_help_explains_every_option() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0
    assert result.stderr == ""
    options = re.split(r"\n  (?=-)", result.stdout.split("options:")[1])
    for option in options:
        text = " ".join(option.split())
        assert text.count("(default") <= 1, text  # each default said once
        assert "(default: None)" not in text and "(default: False)" not in text, text
    recipes = " ".join(next(option for option in options if option.startswith("--recipe")).split())
    recipes = re.sub(r"(\w)- (\w)", r"\1-\2", recipes)  # argparse wraps lines at hyphens too
    starts = [recipes.index(f" {name}: ") for name in RECIPES] + [recipes.index("(default: airbench)")]
    for recipe, start, end in zip(RECIPES.values(), starts, starts[1:], strict=False):
        described = recipes[start:end]
        assert described.count(f"batch {recipe.batch_size}") == 1, described
        assert f"{recipe.epochs} epochs" in described
    for option in ("--data", "--recipe", "--epochs", "--batch-size", "--seed", "--split-seed", "--out", "--resume",
                   "--threads", "--val-size", "--cache-dir", "--run-dir", "promote", *RECIPES):
        assert option in result.stdout


def assert_progress_lines(result: subprocess.CompletedProcess) -> None:
    """A two-epoch run's progress says what happens on lines of their own."""
    assert not [notice for notice in ("oneDNN", "absl", "cpu_feature_guard") if notice in result.stderr], result.stderr
    lines = result.stdout.splitlines()
    # Decoding says how many images and how far it got, then how long it took.
    assert "decoding 100 train images from data" in lines
    assert "decoding 100 train images from data: 50 (50%)" in lines
    assert any(re.fullmatch(r"decoded 100 train images from data in \d+\.\d s", line) for line in lines)
    # Each epoch's timing is a line of its own, not glued to the end of the progress bar.
    # The first also says how long the epoch left will take at the pace so far; the last has none left.
    for epoch, to_go in ((1, r"; 1 epoch to go, about \d+ s at this pace"), (2, "")):
        timing = rf"epoch {epoch}: \d+\.\d s, \d+ images/s, \d+\.\d\d CPUs busy, \d+ images per CPU-second{to_go}"
        assert sum(bool(re.fullmatch(timing, line)) for line in lines) == 1, lines


def test_a_run_without_out_writes_a_run_folder_leaves_models_alone_and_prints_its_promotion(tmp_path: Path) -> None:
    """The README's quick trial, in a checkout of its own: the served model must not change."""
    data = write_image_folder(tmp_path / "data", train_per_class=10)
    checkout = tmp_path / "checkout"
    write_model(checkout / "models" / "cifar10" / "1", val_accuracy=0.0)
    served = tree_digest(checkout / "models")
    home = tmp_path / "home"
    home.mkdir()
    # Two epochs with the progress bar, as the README's quick trial runs (--timing-seconds: a quicker export).
    trained = run_cli("train", "--data", str(data), "--recipe", "tutorial-rgb", "--epochs", "2", "--no-cache",
                      "--threads", "2", "--timing-seconds", "0.05", cwd=checkout, HOME=str(home))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert_progress_lines(trained)
    assert tree_digest(checkout / "models") == served
    # Nor did the export's OpenVINO conversions and NNCF quantization count themselves for Google Analytics: their
    # telemetry writes a client id to ~/intel/ before it sends (core.openvino_runtime turns it off).
    assert not (home / "intel").exists()
    [run] = (checkout / "runs").iterdir()
    assert run.name.startswith("tutorial-rgb-20")
    assert (run / "model" / SAVED_MODEL_FILE).is_file() and (run / "model" / "report").is_dir()
    assert (run / "history.csv").is_file() and (run / "backup").is_dir()  # the per-epoch log and checkpoints
    accuracy = json.loads((run / "model" / METADATA_FILE).read_text())["val_accuracy"]
    assert f"wrote runs/{run.name}/model (metadata.json, report/): validation accuracy {accuracy:.2%}" in trained.stdout
    promote_line = trained.stdout.splitlines()[-1]
    assert promote_line == f"to serve it: python -m training promote runs/{run.name}"
    # The printed command works as printed, from the same folder.
    promoted = run_cli(*promote_line.split("python -m training ")[1].split(), cwd=checkout)
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert [v for v, _ in version_dirs(checkout / "models" / "cifar10")] == [1, 2]
    assert tree_digest(checkout / "models" / "cifar10" / "1") == {
        name.removeprefix("cifar10/1/"): digest for name, digest in served.items()}


def test_resume_needs_the_run_folder(tmp_path: Path) -> None:
    result = run_cli("train", "--resume")
    assert result.returncode == 2 and "--run-dir" in result.stderr and "Traceback" not in result.stderr
    # A mistyped run folder is refused at once, not trained from scratch under the name of the run it meant.
    typo = tmp_path / "runs" / "distil-e30"
    result = run_cli("train", "--data", str(tmp_path / "data.tar.gz"), "--resume", "--run-dir", str(typo), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {typo}: no run to resume there (no options.json, no backup/ checkpoint)" in result.stderr
    assert not typo.exists() and "epoch " not in result.stdout


def test_folders_that_are_not_cifar10s_classes_are_refused_before_training(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", train_per_class=2)
    (data / "train" / "cat").rename(data / "train" / "Cat")  # ten classes, one of them not the contract's
    result = run_cli("train", "--data", str(data), "--recipe", "tutorial-rgb", "--no-cache", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and f"{data}: found 10 classes" in error_lines[0], result.stderr
    assert "'Cat'" in error_lines[0] and "airplane, automobile, bird, cat, deer" in error_lines[0]
    assert "epoch " not in result.stdout and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [["train", "--out"], ["train", "--run-dir"], ["train", "--cache-dir"],
                                     ["promote", "runs/x", "--to"], ["reexport", "models/cifar10/10", "--out"]])
def test_a_file_where_a_folder_goes_is_refused_before_any_work(command: list[str], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for path, words in ((a_file, f"{a_file} is a file, not a folder"),
                        (a_file / "sub", f"{a_file / 'sub'} cannot be written: {a_file} is not a folder")):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, str(path)])
        assert exit_info.value.code == 2
        assert f"argument {command[-1]}: {words}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "reexport"])
def test_the_data_a_version_was_trained_on_follows_its_metadata(command: str, trained_model_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    recorded = json.loads((trained_model_dir / "1" / METADATA_FILE).read_text())
    version = tmp_path / "models" / "shapes" / "1"
    version.mkdir(parents=True)
    out = ["--out", str(tmp_path / "out")] if command == "reexport" else []
    for source, data, words in (("shapes.tar.gz", [], "the model was trained on shapes.tar.gz; pass that dataset "
                                 "with --data"),
                                ("keras.datasets.cifar10", ["--data", "any.tar.gz"], "the model was trained on "
                                 "keras.datasets.cifar10; omit --data, and its download is used")):
        (version / METADATA_FILE).write_text(json.dumps({**recorded, "data": {**recorded["data"], "source": source}}))
        assert main([command, str(version), *data, *out]) == 1
        assert f"error: {version / METADATA_FILE}: {words}" in capsys.readouterr().err


def test_a_failed_download_is_one_line_offering_data(tmp_path: Path) -> None:
    # A proxy nobody listens on: the download fails here whether or not this machine reaches the internet.
    result = run_cli("train", "--recipe", "tutorial-rgb", cwd=tmp_path, KERAS_HOME=str(tmp_path / "keras"),
                     https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: could not download CIFAR-10 through keras.datasets.cifar10 (")
    assert "pass --data with an ImageFolder" in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("bad", ["missing", "not-an-image"])
def test_bad_data_is_one_line_naming_the_file_and_exit_1(tmp_path: Path, bad: str) -> None:
    data = tmp_path / "nowhere.tar.gz"
    if bad == "not-an-image":
        data = write_image_folder(tmp_path / "data", train_per_class=2)
        (data / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = run_cli("train", "--data", str(data), "--out", str(tmp_path / "models" / "x"), "--no-cache",
                     cwd=tmp_path)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert (str(data / "train" / "cat" / "broken.jpg") if bad == "not-an-image" else str(data)) in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "x").exists() or not any((tmp_path / "models" / "x").iterdir())
    assert not (tmp_path / "runs").exists()  # nor a run folder (the default, runs/airbench-<time>) to clear away


@pytest.mark.parametrize(("argv", "recipe"), [([], "airbench"), (["--recipe", "tutorial-rgb"], "tutorial-rgb")])
def test_recipe_names_the_run_folder(argv: list[str], recipe: str) -> None:
    config = config_from_args(build_parser().parse_args(["train", *argv, "--seed", "3"]))
    assert config.recipe == recipe
    assert config.run_dir.parent == Path("runs") and config.run_dir.name.startswith(f"{recipe}-20")


def test_teacher_given_twice_is_an_ensemble_in_order() -> None:
    args = ["train", "--recipe", "airbench-distill", "--teacher", "models/cifar10/4", "--teacher", "runs/a/model"]
    assert config_from_args(build_parser().parse_args(args)).teachers == (Path("models/cifar10/4"),
                                                                          Path("runs/a/model"))
    assert config_from_args(build_parser().parse_args(["train"])).teachers == ()


def test_label_smoothing_is_a_one_off_change_between_0_and_1(capsys: pytest.CaptureFixture) -> None:
    parsed = build_parser().parse_args(["train", "--recipe", "airbench-wide-distill", "--label-smoothing", "0"])
    assert config_from_args(parsed).recipe_changes == {"label_smoothing": 0.0}
    assert "label_smoothing" not in config_from_args(build_parser().parse_args(["train"])).recipe_changes
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--label-smoothing", "1.5"])
    assert exit_info.value.code == 2
    assert "argument --label-smoothing: must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_widths_are_a_one_off_change_of_three_positive_numbers(capsys: pytest.CaptureFixture) -> None:
    parsed = build_parser().parse_args(["train", "--recipe", "airbench-wide-distill", "--widths", "128", "384", "384"])
    assert config_from_args(parsed).recipe_changes == {"widths": (128, 384, 384)}
    assert "widths" not in config_from_args(build_parser().parse_args(["train"])).recipe_changes
    for refused, message in ((["128", "384"], "expected 3 arguments"), (["128", "0", "384"], "must be a positive")):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--widths", *refused])
        assert exit_info.value.code == 2
        assert f"argument --widths: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("refused", [["--recipe", "resnet"], ["--recipe", "seed-rgb"], ["--arch", "airbench"]])
def test_an_unknown_recipe_or_option_is_refused_with_the_choices(refused: list[str],
                                                                 capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", *refused])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert ("tutorial-rgb" in error) == (refused[0] == "--recipe"), error


@pytest.mark.parametrize("option", ["--epochs", "--batch-size", "--val-size", "--threads"])
def test_non_positive_numbers_are_refused(option: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", option, "0"])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be a positive integer, got 0" in capsys.readouterr().err


def test_timing_seconds_reaches_the_export_and_must_be_positive_and_finite(capsys: pytest.CaptureFixture) -> None:
    assert config_from_args(build_parser().parse_args(["train", "--timing-seconds", "0.05"])).timing_seconds == 0.05
    assert config_from_args(build_parser().parse_args(["train"])).timing_seconds == TIMING_SECONDS
    for command in (["train"], ["reexport", "models/cifar10/9", "--data", "data"]):
        for value in ("0", "inf", "nan"):  # inf: a timing loop that never ends after hours of training
            with pytest.raises(SystemExit) as exit_info:
                main([*command, "--timing-seconds", value])
            assert exit_info.value.code == 2
            assert (f"argument --timing-seconds: must be a positive finite number, got {value}"
                    in capsys.readouterr().err)


def test_split_seed_keeps_the_validation_images_while_seed_changes_the_rest(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", train_per_class=10)

    def config(*options: str) -> TrainConfig:
        return config_from_args(build_parser().parse_args(
            ["train", "--data", str(data), "--no-cache", "--run-dir", str(tmp_path / "run"), *options]))

    def validation_images(*options: str) -> np.ndarray:
        return load_splits(config(*options)).val.images

    first = validation_images()
    np.testing.assert_array_equal(validation_images("--seed", "1", "--split-seed", "0"), first)
    assert not np.array_equal(validation_images("--seed", "1"), first)
    # A resumed run must hold out the same images: another split seed is refused by name.
    keep_run_options(config("--seed", "1", "--split-seed", "0"))
    with pytest.raises(TrainingError, match=r"--split-seed 0 \(this command: 2\)"):
        check_run_options(config("--seed", "1", "--split-seed", "2", "--resume"))
    check_run_options(config("--seed", "1", "--split-seed", "0", "--resume"))


def test_resume_refuses_an_archive_other_than_the_runs_own(tmp_path: Path) -> None:
    archives = []
    for seed in (0, 1):  # the same classes and counts, other images
        folder = write_image_folder(tmp_path / f"data-{seed}", train_per_class=3, seed=seed)
        with tarfile.open(tmp_path / f"data-{seed}.tar.gz", "w:gz") as archive:
            archive.add(folder / "train", arcname="train")
        archives.append(tmp_path / f"data-{seed}.tar.gz")

    def config(data: Path, *options: str) -> TrainConfig:
        return config_from_args(build_parser().parse_args(
            ["train", "--data", str(data), "--no-cache", "--run-dir", str(tmp_path / "run"), *options]))

    keep_run_options(config(archives[0]), load_splits(config(archives[0])).dataset)
    interrupted = check_run_options(config(archives[1], "--resume"))  # the options alone agree
    assert interrupted is not None and len(interrupted["data-sha256"]) == 64
    with pytest.raises(TrainingError, match=r"options.json: the interrupted run trained on data of sha256 "
                       rf"\w{{12}}\.\.\., and {re.escape(str(archives[1]))} is \w{{12}}"):
        check_run_data(config(archives[1], "--resume"), interrupted,
                       load_splits(config(archives[1], "--resume")).dataset)
    check_run_data(config(archives[0], "--resume"), interrupted, load_splits(config(archives[0], "--resume")).dataset)
    assert check_run_options(config(archives[0])) is None  # not resuming: nothing read


def test_resume_compares_teachers_by_the_folder_they_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for version in ("4", "9"):
        (tmp_path / "models" / version).mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "models")

    def config(*teachers: str, resume: bool = True) -> TrainConfig:
        return config_from_args(build_parser().parse_args(
            ["train", "--recipe", "airbench-distill", "--run-dir", "run", *(["--resume"] if resume else []),
             *[option for teacher in teachers for option in ("--teacher", teacher)]]))

    def resume(*teachers: str) -> None:
        check_run_options(config(*teachers))
        keep_run_options(config(*teachers))

    keep_run_options(config("models/4", "models/9", resume=False))  # the first run
    resume(str(tmp_path / "models" / "4"), "linked/../models/9")
    resume("./models/4/", "linked/9")
    resume("models/9", "models/4")  # the student learns their average: the order does not matter
    with pytest.raises(TrainingError, match=r"--teacher models/9 models/4 \(this command: models/4\)"):
        resume("models/4")


def test_resume_continues_from_the_last_epoch(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", train_per_class=10)
    common = ["train", "--data", str(data), "--recipe", "tutorial-rgb", "--out", str(tmp_path / "models" / "shapes"),
              "--run-dir", str(tmp_path / "run"), "--no-cache", "--threads", "2", "--quiet", "--timing-seconds", "0.05"]
    # The first run stops as a crash would stop it: killed once epoch 1's checkpoint and history row are written
    # (the checkpoint comes before the epoch's line, the row right after it), two epochs before its export.
    history, log = tmp_path / "run" / "history.csv", tmp_path / "interrupted.log"
    # An earlier run's export in the folder: once this run starts over, promote must not find it.
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / METADATA_FILE).write_text("{}")
    with log.open("w") as stderr, subprocess.Popen(**cli(*common, "--epochs", "3"), text=True,
                                                   stdout=subprocess.PIPE, stderr=stderr) as interrupted:
        try:
            assert any(line.startswith("epoch 1:") for line in interrupted.stdout), log.read_text()[-2000:]
            deadline = time.monotonic() + 60
            while len(history.read_text().splitlines()) < 2:  # the header and epoch 1
                assert time.monotonic() < deadline, "epoch 1's history row was never written"
                time.sleep(0.05)
        finally:
            interrupted.kill()  # leaving the block closes its stdout and waits for it
    assert not (tmp_path / "models").exists() and not (tmp_path / "run" / "model").exists()
    # Resuming with another recipe change would train a mix of two runs: refused, naming each difference.
    mixed = run_cli(*common, "--epochs", "3", "--resume", "--flip", "alternating", "--seed", "5")
    assert mixed.returncode == 1 and "Traceback" not in mixed.stderr, mixed.stderr[-2000:]
    assert (f"error: {tmp_path / 'run' / 'options.json'}: the interrupted run trained with --seed 0 (this command: "
            "5); --flip not given (this command: alternating). Resume it with its own options") in mixed.stderr
    assert "epoch " not in mixed.stdout and not (tmp_path / "models").exists()
    resumed = run_cli(*common, "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Epochs 2 and 3 ran, not 1: it came from the checkpoint.
    assert "epoch 2:" in resumed.stdout and "epoch 3:" in resumed.stdout and "epoch 1:" not in resumed.stdout
    metadata = json.loads((tmp_path / "models" / "shapes" / "1" / METADATA_FILE).read_text())
    assert metadata["epochs_completed"] == 3 and len(metadata["seconds_per_epoch"]) == 3
    # Resuming a finished run trains nothing and exports the same weights again (e.g. after a failed export).
    again = run_cli(*common, "--epochs", "3", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "epoch " not in again.stdout
    reexported = json.loads((tmp_path / "models" / "shapes" / "2" / METADATA_FILE).read_text())
    assert reexported["val_accuracy"] == metadata["val_accuracy"]
    assert reexported["history"] == metadata["history"]


def test_an_epoch_line_says_how_long_the_rest_will_take(capsys: pytest.CaptureFixture) -> None:
    # make distill's first epoch on a 2-core CPU without bfloat16 instructions took 1,356 s (docs/training.md).
    timer = EpochTimer(train_images=45_000)
    timer.set_params({"epochs": 30})
    for epoch, seconds in ((0, 1356.0), (1, 1344.0)):
        timer.on_epoch_begin(epoch)
        timer.started, timer.cpu_started = time.perf_counter() - seconds, time.process_time() - 1.9 * seconds
        timer.on_epoch_end(epoch, {})
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("epoch 1: 1356.") and first.endswith("; 29 epochs to go, about 10 h 55 min at this pace")
    assert second.endswith("; 28 epochs to go, about 10 h 30 min at this pace")  # at the two epochs' mean pace
    timer.set_params({"epochs": 3})
    timer.on_epoch_begin(2)
    timer.started, timer.cpu_started = time.perf_counter() - 700.0, time.process_time() - 1.9 * 700.0
    timer.on_epoch_end(2, {})
    assert capsys.readouterr().out.rstrip().endswith("images per CPU-second")  # the last: nothing left
