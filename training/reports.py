"""Pictures and tables of a trained model, written beside it in ``<version>/report/``.

Everything renders with matplotlib's Agg backend: no display is needed.
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

RIGHT_COLOR = "tab:blue"
WRONG_COLOR = "tab:red"
OTHER_COLOR = "lightgray"
PREDICTION_GRID = (4, 4)


def read_history(csv_path: Path) -> dict[str, list[float]]:
    with csv_path.open() as stream:
        rows = list(csv.DictReader(stream))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    epochs = [int(e) + 1 for e in history["epoch"]]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, class_names: tuple[str, ...], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 7))
    image = axis.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2
    for true in ticks:
        for guess in ticks:
            color = "white" if matrix[true, guess] > threshold else "black"
            axis.text(guess, true, str(matrix[true, guess]), ha="center", va="center", color=color, fontsize=8)
    figure.colorbar(image, ax=axis)
    axis.set_title("Validation confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def per_class_table(matrix: np.ndarray, class_names: tuple[str, ...]) -> str:
    lines = ["| class | images | correct | accuracy |", "|---|---:|---:|---:|"]
    for index, name in enumerate(class_names):
        total, correct = int(matrix[index].sum()), int(matrix[index, index])
        lines.append(f"| {name} | {total} | {correct} | {correct / max(total, 1):.2%} |")
    total = int(matrix.sum())
    lines.append(f"| **all** | {total} | {int(np.trace(matrix))} | {np.trace(matrix) / max(total, 1):.2%} |")
    return "\n".join(lines) + "\n"


def plot_predictions(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...], path: Path
) -> None:
    """The tutorial's plot_pred/plot_bar: each image beside its ten probability bars.

    The predicted bar is blue when it is the true class and red when it is not; the true
    class's bar is outlined so a wrong answer shows what it should have been.
    """
    rows, columns = PREDICTION_GRID
    count = min(rows * columns, len(images))
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(4 * columns, 2.2 * rows),
                                gridspec_kw={"width_ratios": [1, 1.6] * columns})
    axes = np.atleast_2d(axes)
    for slot in range(rows * columns):
        row, column = divmod(slot, columns)
        image_axis, bar_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
        image_axis.axis("off")
        if slot >= count:
            bar_axis.axis("off")
            continue
        predicted, true = int(probabilities[slot].argmax()), int(labels[slot])
        image_axis.imshow(images[slot], interpolation="nearest")
        color = RIGHT_COLOR if predicted == true else WRONG_COLOR
        image_axis.set_title(f"{class_names[predicted]} {probabilities[slot, predicted]:.0%}\n"
                             f"(true: {class_names[true]})", color=color, fontsize=8)
        colors = [OTHER_COLOR] * len(class_names)
        colors[predicted] = color
        bars = bar_axis.bar(range(len(class_names)), probabilities[slot], color=colors)
        bars[true].set_edgecolor("black")
        bar_axis.set_ylim(0, 1)
        bar_axis.set_xticks(range(len(class_names)), [n[:4] for n in class_names], rotation=90, fontsize=6)
        bar_axis.tick_params(axis="y", labelsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_architecture(model: object, path: Path) -> str | None:
    """The Keras model diagram, or the one-line reason it could not be drawn."""
    import keras

    try:
        keras.utils.plot_model(model, to_file=str(path), show_shapes=True, show_layer_names=True)
    except (ImportError, OSError, FileNotFoundError) as error:
        return f"model diagram skipped: keras.utils.plot_model needs pydot and graphviz ({error})"
    return None if path.exists() else "model diagram skipped: pydot and graphviz are not installed"
