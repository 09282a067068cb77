"""The report a trained model ships with: what each picture and table says, and its regeneration."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from matplotlib.colors import to_rgb as matplotlib_rgb
from PIL import Image

from core.contract import CLASS_NAMES, METADATA_FILE, version_dirs
from tests.synthetic import shape_arrays
from training import reports
from training.cli import main
from training.regenerate_report import regenerate_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def one_hot_probabilities(predicted: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Rows that put ``confidence`` on ``predicted`` and share the rest evenly."""
    rest = (1 - confidence) / (len(CLASS_NAMES) - 1)
    probabilities = np.repeat(rest[:, None], len(CLASS_NAMES), axis=1)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_confusion_rows_are_percent_of_each_true_class_with_counts() -> None:
    labels = np.array([3] * 50 + [5] * 10)
    predicted = np.array([3] * 41 + [5] * 9 + [5] * 7 + [3] * 3)
    matrix = reports.confusion_matrix(labels, predicted, len(CLASS_NAMES))
    percent = reports.row_percent(matrix)
    assert matrix[3, 5] == 9 and matrix[5, 3] == 3
    assert percent[3, 3] == pytest.approx(82.0) and percent[3, 5] == pytest.approx(18.0)
    assert percent[5, 3] == pytest.approx(30.0)
    assert np.allclose(percent[[3, 5]].sum(axis=1), 100.0) and not percent[0].any()  # an empty row stays 0

    figure = reports.plot_confusion(matrix, CLASS_NAMES, Path("/dev/null"))
    cells = {text.get_text() for text in figure.axes[0].texts}
    # Percent of the row first, the count under it: the 9 cats taken for dogs are 18% of the cats.
    assert {"82%\n41", "18%\n9", "30%\n3", "70%\n7"} <= cells
    assert figure.axes[0].get_yticklabels()[3].get_text() == "cat (50)"


def test_per_class_table_names_the_most_frequent_confusion() -> None:
    labels = np.array([3] * 10 + [5] * 10)
    predicted = np.array([3] * 7 + [5] * 2 + [4] + [5] * 10)
    table = reports.per_class_table(reports.confusion_matrix(labels, predicted, 10), CLASS_NAMES)
    assert "| cat | 10 | 7 | 70.00% | dog (20.0%, 2) |" in table
    assert "| dog | 10 | 10 | 100.00% | — |" in table
    assert "| **all** | 20 | 17 | 85.00% | |" in table


def test_most_confident_mistakes_come_first_and_right_answers_never() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5])
    predicted = np.array([0, 2, 2, 1, 9, 5])  # wrong: indices 1, 3, 4
    probabilities = one_hot_probabilities(predicted, np.array([0.99, 0.6, 0.98, 0.9, 0.7, 0.97]))
    assert reports.most_confident_mistakes(labels, probabilities).tolist() == [3, 4, 1]
    assert reports.most_confident_mistakes(labels, probabilities, size=2).tolist() == [3, 4]


def test_prediction_grid_spells_out_every_class_and_colours_right_and_wrong(tmp_path: Path) -> None:
    images, labels = shape_arrays(per_class=1, seed=0)
    predicted = labels.copy()
    predicted[3] = 5  # the cat taken for a dog
    probabilities = one_hot_probabilities(predicted, np.full(10, 0.8))
    figure = reports.plot_predictions(images, labels, probabilities, CLASS_NAMES, tmp_path / "grid.png", "a title")
    bar_axes = [axis for axis in figure.axes if axis.patches]
    assert len(bar_axes) == 10
    for axis in bar_axes:
        assert [label.get_text() for label in axis.get_yticklabels()] == list(CLASS_NAMES)
    cat_axis = bar_axes[3]
    assert cat_axis.get_yticklabels()[3].get_fontweight() == "bold"  # the true class
    colours = [patch.get_facecolor() for patch in cat_axis.patches]
    assert colours[5][:3] == pytest.approx(matplotlib_rgb(reports.WRONG_COLOR))
    assert bar_axes[0].patches[0].get_facecolor()[:3] == pytest.approx(matplotlib_rgb(reports.RIGHT_COLOR))
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert "dog 80%\n(wrong, true: cat)" in titles and "airplane 80%\n(right)" in titles
    assert Image.open(tmp_path / "grid.png").size[0] >= 1600


@pytest.mark.parametrize("epochs", [1, 4, 35])
def test_curves_have_whole_epoch_ticks(tmp_path: Path, epochs: int) -> None:
    history = {"loss": list(np.linspace(2, 1, epochs)), "accuracy": list(np.linspace(0.3, 0.9, epochs)),
               "val_loss": list(np.linspace(2, 1.2, epochs)), "val_accuracy": list(np.linspace(0.3, 0.8, epochs))}
    figure = reports.plot_curves(history, tmp_path / "curves.png")
    for axis in figure.axes:
        low, high = axis.get_xlim()
        shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
        assert shown and all(float(tick).is_integer() for tick in shown), shown
        assert low < 1 and high > epochs
    if epochs <= reports.EVERY_EPOCH_TICKS:
        assert list(figure.axes[0].get_xticks()) == list(range(1, epochs + 1))


def test_model_diagram_draws_every_layer_and_its_connections(tmp_path: Path) -> None:
    inputs = keras.Input((8,), name="pixels")
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    joined = keras.layers.Concatenate(name="joined")([inputs, hidden])  # a skip connection
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(joined), name="tiny")
    figure = reports.plot_model_diagram(model, tmp_path / "model.png")
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert "tiny: 62 parameters" in texts
    assert "hidden  (Dense, relu)" in texts and "joined  (Concatenate)" in texts
    assert "output 4 · 36 params" in texts  # 8 x 4 + 4
    assert "output 12" in texts and "output 2 · 26 params" in texts  # joined; logits: 12 inputs x 2 + 2
    arrows = [patch for patch in figure.axes[0].patches if type(patch).__name__ == "FancyArrowPatch"]
    assert len(arrows) == 4  # pixels->hidden, pixels->joined (the skip), hidden->joined, joined->logits
    assert (tmp_path / "model.png").read_bytes()[:8] == PNG_SIGNATURE


def test_regenerating_rewrites_the_report_from_the_exported_model(
    trained_model_dir: Path, shapes_dataset: Path, tmp_path: Path
) -> None:
    version_dir = tmp_path / "1"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], version_dir)
    shutil.rmtree(version_dir / reports.REPORT_DIR)
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    accuracy = regenerate_report(version_dir, shapes_dataset, cache_dir=None)
    assert round(accuracy, 4) == metadata["val_accuracy"]
    assert sorted(path.name for path in (version_dir / reports.REPORT_DIR).iterdir()) == sorted(
        [reports.CURVES_PNG, reports.CONFUSION_PNG, reports.PER_CLASS_MD, reports.PREDICTIONS_PNG,
         reports.MISTAKES_PNG, reports.MODEL_PNG])


def test_regenerating_from_other_data_is_refused_naming_both_hashes(
    trained_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.synthetic import write_image_folder

    other = write_image_folder(tmp_path / "other", train_per_class=3, seed=1)
    version_dir = version_dirs(trained_model_dir)[-1][1]
    assert main(["report", str(version_dir), "--data", str(other), "--cache-dir", str(tmp_path / "cache")]) == 1
    error = capsys.readouterr().err
    recorded = json.loads((version_dir / METADATA_FILE).read_text())["data"]["sha256"]
    assert error.startswith(f"error: {other}: sha256 ") and recorded in error


@pytest.mark.parametrize(("metadata", "words"), [
    (None, "metadata.json: no such file. Pass an exported version directory"),
    ("{not json", "is not readable JSON"),
    ('{"val_accuracy": 0.5}', "has no architecture, class_names, data, history, seed, val_images"),
])
def test_a_folder_that_is_not_an_export_is_refused_naming_the_file(metadata: str | None, words: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    version_dir = tmp_path / "3"
    version_dir.mkdir()
    if metadata is not None:
        (version_dir / METADATA_FILE).write_text(metadata)
    assert main(["report", str(version_dir), "--data", str(tmp_path / "data")]) == 1
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith(f"error: {version_dir / METADATA_FILE}") and words in error, error
