"""``python -m training promote``: checks, the accuracy comparison, and atomic publishing that never overwrites."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.contract import CLASS_NAMES, METADATA_FILE, VARIABLES_INDEX, version_dirs
from tests.model_versions import NotProbabilities, WrongSignature, corrupt_saved_model, drop_metadata, write_model
from training.promote import PromotionError, promote


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the sha256 of its bytes: equal before and after = nothing changed."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders as training writes them (RUN/model/...), at several accuracies, and faulty ones."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, accuracy in (("good", 0.80), ("better", 0.85), ("worse", 0.70)):
        made[name] = root / name
        write_model(made[name] / "model", val_accuracy=accuracy, seed=len(made))
    made["wrong-signature"] = root / "wrong-signature"
    write_model(made["wrong-signature"] / "model", WrongSignature(), val_accuracy=0.99)
    made["nan"] = root / "nan"
    write_model(made["nan"] / "model", NotProbabilities(), val_accuracy=0.99)
    return made


@pytest.fixture
def served(tmp_path: Path, exports: dict[str, Path]) -> Path:
    """A model folder serving version 1 (the 'good' run, 80%)."""
    model_root = tmp_path / "models" / "cifar10"
    promote(exports["good"], model_root)
    return model_root


def faulty_copy(exports: dict[str, Path], tmp_path: Path, fault: str) -> Path:
    run = tmp_path / f"run-{fault}"
    shutil.copytree(exports["better"], run)
    export = run / "model"
    if fault == "no-metadata":
        drop_metadata(export)
    elif fault == "no-variables":
        (export / VARIABLES_INDEX).unlink()
    elif fault == "corrupt":
        corrupt_saved_model(export)
    elif fault == "wrong-classes":
        metadata = json.loads((export / METADATA_FILE).read_text())
        metadata["class_names"] = list(reversed(CLASS_NAMES))
        (export / METADATA_FILE).write_text(json.dumps(metadata))
    elif fault == "no-accuracy":
        metadata = json.loads((export / METADATA_FILE).read_text())
        del metadata["val_accuracy"]
        (export / METADATA_FILE).write_text(json.dumps(metadata))
    return run


def test_first_promotion_publishes_version_1_with_its_provenance(tmp_path: Path, exports: dict[str, Path]) -> None:
    model_root = tmp_path / "models" / "cifar10"
    before = tree_digest(exports["good"])
    promotion = promote(exports["good"], model_root)
    assert promotion.version_dir == model_root / "1" and promotion.served is None
    assert [p.name for p in model_root.iterdir()] == ["1"]  # no staging folder left behind
    metadata = json.loads((model_root / "1" / METADATA_FILE).read_text())
    assert metadata["name"] == "cifar10" and metadata["val_accuracy"] == 0.80
    assert metadata["promoted"]["from"] == str((exports["good"] / "model").resolve())
    assert metadata["promoted"]["replaced_version"] is None and metadata["promoted"]["forced"] is False
    published = tree_digest(model_root / "1")
    source = tree_digest(exports["good"] / "model")
    assert {name for name in published if name != METADATA_FILE} == {name for name in source if name != METADATA_FILE}
    assert all(published[name] == source[name] for name in source if name != METADATA_FILE)
    assert tree_digest(exports["good"]) == before  # the run folder is only read


def test_a_better_run_becomes_the_next_version_and_older_ones_are_untouched(served: Path,
                                                                             exports: dict[str, Path]) -> None:
    version_1 = tree_digest(served / "1")
    promotion = promote(exports["better"], served)
    assert promotion.version_dir == served / "2" and promotion.served == (1, 0.80)
    assert tree_digest(served / "1") == version_1
    # The same run again is a new version, never a rewrite of the one it already became.
    version_2 = tree_digest(served / "2")
    assert promote(exports["better"], served).version_dir == served / "3"
    assert tree_digest(served / "2") == version_2 and tree_digest(served / "1") == version_1


def test_a_worse_run_is_refused_unless_forced(served: Path, exports: dict[str, Path]) -> None:
    with pytest.raises(PromotionError, match=r"70\.00% is below the 80\.00% .*--force"):
        promote(exports["worse"], served)
    assert [v for v, _ in version_dirs(served)] == [1] and [p.name for p in served.iterdir()] == ["1"]
    forced = promote(exports["worse"], served, force=True)
    assert forced.version_dir == served / "2"
    assert json.loads((forced.version_dir / METADATA_FILE).read_text())["promoted"]["forced"] is True


@pytest.mark.parametrize(("fault", "words"), [
    ("no-metadata", "is incomplete: it has no metadata.json"),
    ("no-variables", f"is incomplete: it has no {VARIABLES_INDEX}"),
    ("corrupt", "is not a loadable SavedModel"),
    ("wrong-classes", "class_names must be the ten CIFAR-10 classes"),
    ("no-accuracy", "val_accuracy must be a number"),
])
def test_incomplete_or_broken_runs_are_refused(served: Path, exports: dict[str, Path], tmp_path: Path,
                                               fault: str, words: str) -> None:
    before = tree_digest(served)
    with pytest.raises(PromotionError, match=words):
        promote(faulty_copy(exports, tmp_path, fault), served)
    assert tree_digest(served) == before and [p.name for p in served.iterdir()] == ["1"]


@pytest.mark.parametrize(("run", "words"), [
    ("wrong-signature", "does not match the contract"),
    ("nan", "does not answer probabilities"),
])
def test_contract_breaking_models_are_refused_even_with_better_figures(served: Path, exports: dict[str, Path],
                                                                       run: str, words: str) -> None:
    with pytest.raises(PromotionError, match=words):
        promote(exports[run], served, force=True)
    assert [p.name for p in served.iterdir()] == ["1"]


def test_cli_prints_the_outcome_and_exits_non_zero_on_refusal(served: Path, exports: dict[str, Path]) -> None:
    command = [sys.executable, "-m", "training", "promote"]
    refused = subprocess.run([*command, str(exports["worse"]), "--to", str(served)], capture_output=True,
                             text=True, timeout=300, check=False)
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--force" in errors[0] and "Traceback" not in refused.stderr
    published = subprocess.run([*command, str(exports["better"]), "--to", str(served)], capture_output=True,
                               text=True, timeout=300, check=False)
    assert published.returncode == 0, published.stderr[-2000:]
    assert f"published {served / '2'} (validation accuracy 85.00%; version 1 had 80.00%)" in published.stdout
