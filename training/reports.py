"""Pictures and tables of a trained model, written beside it in ``<version>/report/``.

:func:`write_report` draws them all from the validation images, their labels and the exported
model's probabilities, so the training run and a later re-evaluation (``training.regenerate_report``)
write the same report. Everything renders with matplotlib's Agg backend: no display and no Graphviz
are needed.
"""

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import keras
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator

RIGHT_COLOR = "tab:blue"
WRONG_COLOR = "tab:red"
OTHER_COLOR = "lightgray"
PREDICTION_GRID = (4, 4)  # rows, columns of (image, bars) pairs
SAMPLES = PREDICTION_GRID[0] * PREDICTION_GRID[1]
# Percent shares of a row span 0.1-95%: a power scale keeps a 5% confusion visibly coloured
# beside a 90% diagonal (a linear one leaves it near white).
CONFUSION_GAMMA = 0.4
# Up to this many epochs every epoch gets its tick; longer runs get a few integer ticks.
EVERY_EPOCH_TICKS = 12
DPI = 100

REPORT_DIR = "report"  # inside the exported version directory

CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
PER_CLASS_MD = "per_class.md"
PREDICTIONS_PNG = "predictions.png"
MISTAKES_PNG = "mistakes.png"
MODEL_PNG = "model.png"


def write_report(
    report_dir: Path,
    history: dict[str, list[float]],
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    model: keras.Model,
    seed: int,
) -> list[Path]:
    """Every report file of one model, from its validation images, labels and served probabilities."""
    report_dir.mkdir(parents=True, exist_ok=True)
    class_names = tuple(class_names)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(class_names))
    plot_curves(history, report_dir / CURVES_PNG)
    plot_confusion(matrix, class_names, report_dir / CONFUSION_PNG)
    (report_dir / PER_CLASS_MD).write_text(per_class_table(matrix, class_names))
    sample = random_sample(len(labels), seed)
    right = int(np.sum(predicted[sample] == labels[sample]))
    plot_predictions(images[sample], labels[sample], probabilities[sample], class_names,
                     report_dir / PREDICTIONS_PNG,
                     f"{len(sample)} validation images drawn at random (seed {seed}): {right} right, "
                     f"{len(sample) - right} wrong")
    mistakes = most_confident_mistakes(labels, probabilities)
    plot_predictions(images[mistakes], labels[mistakes], probabilities[mistakes], class_names,
                     report_dir / MISTAKES_PNG,
                     f"The {len(mistakes)} most confident mistakes among {len(labels):,} validation images "
                     f"({int(np.sum(predicted != labels)):,} wrong in all)")
    plot_model_diagram(model, report_dir / MODEL_PNG)
    return [report_dir / name for name in
            (CURVES_PNG, CONFUSION_PNG, PER_CLASS_MD, PREDICTIONS_PNG, MISTAKES_PNG, MODEL_PNG)]


def read_history(csv_path: Path) -> dict[str, list[float]]:
    with csv_path.open() as stream:
        rows = list(csv.DictReader(stream))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}


# ---- learning curves ------------------------------------------------------------------------

def plot_curves(history: dict[str, list[float]], path: Path) -> Figure:
    """Loss and accuracy per epoch, train vs validation, on an axis of whole epochs."""
    count = len(history["loss"])
    epochs = [int(e) + 1 for e in history["epoch"]] if "epoch" in history else list(range(1, count + 1))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        if len(epochs) <= EVERY_EPOCH_TICKS:
            axis.set_xticks(epochs)
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Half an epoch of margin: a one-epoch run is a dot above "1", not on a fractional axis.
        axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return _save(figure, path)


# ---- confusion matrix and per-class table ---------------------------------------------------

def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def row_percent(matrix: np.ndarray) -> np.ndarray:
    """Each row as percent of its true class (a row with no images stays 0)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix * 100.0, totals, out=np.zeros(matrix.shape), where=totals > 0)


def plot_confusion(matrix: np.ndarray, class_names: tuple[str, ...], path: Path) -> Figure:
    """Row-normalised: each cell is the share of a true class given each answer, with its count."""
    percent = row_percent(matrix)
    figure, axis = plt.subplots(figsize=(10, 8.5))
    norm = PowerNorm(gamma=CONFUSION_GAMMA, vmin=0, vmax=100)
    image = axis.imshow(percent, cmap="Blues", norm=norm)
    ticks = range(len(class_names))
    totals = matrix.sum(axis=1)
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, [f"{name} ({total:,})" for name, total in zip(class_names, totals, strict=True)])
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class (images)")
    for true in ticks:
        for guess in ticks:
            count = int(matrix[true, guess])
            if count == 0:
                axis.text(guess, true, "·", ha="center", va="center", color="gray", fontsize=9)
                continue
            color = "white" if norm(percent[true, guess]) > 0.6 else "black"
            weight = "bold" if true == guess else "normal"
            axis.text(guess, true, f"{_percent_text(percent[true, guess])}\n{count:,}", ha="center", va="center",
                      color=color, fontsize=8, fontweight=weight, linespacing=1.1)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    colorbar.set_ticks([0, 1, 5, 10, 25, 50, 75, 100])
    colorbar.set_label("% of the true class (colour scale stretched for small shares)")
    accuracy = np.trace(matrix) / max(int(matrix.sum()), 1)
    axis.set_title(f"Validation confusion matrix: each row is one true class, in % of its images, with counts\n"
                   f"overall accuracy {accuracy:.2%} on {int(matrix.sum()):,} images", fontsize=11)
    figure.tight_layout()
    return _save(figure, path)


def _percent_text(value: float) -> str:
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%"


def per_class_table(matrix: np.ndarray, class_names: tuple[str, ...]) -> str:
    percent = row_percent(matrix)
    lines = ["| class | images | correct | accuracy | most often mistaken for |", "|---|---:|---:|---:|---|"]
    for index, name in enumerate(class_names):
        total, correct = int(matrix[index].sum()), int(matrix[index, index])
        others = matrix[index].copy()
        others[index] = -1
        worst = int(others.argmax())
        mistaken = (f"{class_names[worst]} ({percent[index, worst]:.1f}%, {int(matrix[index, worst])})"
                    if matrix[index, worst] > 0 else "—")
        lines.append(f"| {name} | {total} | {correct} | {correct / max(total, 1):.2%} | {mistaken} |")
    total = int(matrix.sum())
    lines.append(f"| **all** | {total} | {int(np.trace(matrix))} | {np.trace(matrix) / max(total, 1):.2%} | |")
    return "\n".join(lines) + "\n"


# ---- prediction grids -----------------------------------------------------------------------

def random_sample(count: int, seed: int, size: int = SAMPLES) -> np.ndarray:
    return np.random.default_rng(seed).choice(count, min(size, count), replace=False)


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, size: int = SAMPLES) -> np.ndarray:
    """Indices of the wrong answers given with the highest confidence, most confident first."""
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    confidence = probabilities[wrong].max(axis=1)
    return wrong[np.argsort(-confidence, kind="stable")[:size]]


def plot_predictions(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...], path: Path,
    title: str,
) -> Figure:
    """The tutorial's plot_pred/plot_bar: each image beside its ten probability bars.

    The predicted bar is blue when it is the true class and red when it is not; the true class's
    bar is outlined and its name set in bold, so a wrong answer shows what it should have been.
    """
    rows, columns = PREDICTION_GRID
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(4.4 * columns, 2.3 * rows),
                                gridspec_kw={"width_ratios": [1, 1.5] * columns})
    axes = np.atleast_2d(axes)
    positions = np.arange(len(class_names))
    for slot in range(rows * columns):
        row, column = divmod(slot, columns)
        image_axis, bar_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
        image_axis.axis("off")
        if slot >= len(images):
            bar_axis.axis("off")
            continue
        predicted, true = int(probabilities[slot].argmax()), int(labels[slot])
        color = RIGHT_COLOR if predicted == true else WRONG_COLOR
        image_axis.imshow(images[slot], interpolation="nearest")
        verdict = "right" if predicted == true else f"wrong, true: {class_names[true]}"
        image_axis.set_title(f"{class_names[predicted]} {probabilities[slot, predicted]:.0%}\n({verdict})",
                             color=color, fontsize=9)
        colors = [OTHER_COLOR] * len(class_names)
        colors[predicted] = color
        bars = bar_axis.barh(positions, probabilities[slot], color=colors, height=0.75)
        bars[true].set_edgecolor("black")
        bars[true].set_linewidth(1.2)
        bar_axis.set_xlim(0, 1)
        bar_axis.set_yticks(positions, class_names, fontsize=8)
        bar_axis.get_yticklabels()[true].set_fontweight("bold")
        bar_axis.invert_yaxis()  # airplane on top, as the page lists them
        bar_axis.set_xticks([0, 0.5, 1], ["0", "50%", "100%"], fontsize=7)
        bar_axis.spines[["top", "right"]].set_visible(False)
    figure.suptitle(f"{title}\npredicted bar blue when right, red when wrong; the true class outlined and in bold",
                    fontsize=11)
    figure.tight_layout()
    return _save(figure, path)


# ---- model diagram --------------------------------------------------------------------------

def plot_model_diagram(model: keras.Model, path: Path) -> Figure:
    """A box per layer, top to bottom, with its type, output shape and parameters, as the tutorial's
    ``keras.utils.plot_model(show_shapes=True)`` draws it, but with matplotlib: no Graphviz needed."""
    layers = list(model.layers)
    parents = _layer_parents(model, layers)
    box_height, gap = 0.62, 0.38
    step = box_height + gap
    figure = Figure(figsize=(6.4, 0.9 + step * len(layers)))
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_xlim(0, 6.4)
    axis.set_ylim(-(step * len(layers)) - 0.3, 0.6)
    axis.axis("off")
    axis.text(3.2, 0.25, f"{model.name}: {model.count_params():,} parameters", ha="center", va="center",
              fontsize=11, fontweight="bold")
    centres = {}
    for index, layer in enumerate(layers):
        top = -index * step
        centres[id(layer)] = (3.2, top - box_height / 2)
        frozen = bool(layer.weights) and not any(weight.trainable for weight in layer.weights)
        axis.add_patch(FancyBboxPatch((0.6, top - box_height), 5.2, box_height, boxstyle="round,pad=0.02",
                                      facecolor="#e8eef9" if not frozen else "#eeeeee", edgecolor="#4a6fa5"))
        params = layer.count_params() if layer.built else 0
        detail = f"output {_shape_text(layer)}" + (f" · {params:,} params" if params else "")
        if frozen:
            detail += " (frozen)"
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        kind = type(layer).__name__ + ("" if activation == "linear" else f", {activation}")
        axis.text(3.2, top - 0.2, f"{layer.name}  ({kind})", ha="center", va="center", fontsize=9, fontweight="bold")
        axis.text(3.2, top - 0.44, detail, ha="center", va="center", fontsize=8)
    for index, layer in enumerate(layers):
        for parent in parents[id(layer)]:
            start, end = centres[parent], centres[id(layer)]
            skip = layers.index(next(item for item in layers if id(item) == parent)) != index - 1
            axis.add_patch(FancyArrowPatch(
                (start[0] + (1.2 if skip else 0), start[1] - box_height / 2),
                (end[0] + (1.2 if skip else 0), end[1] + box_height / 2),
                arrowstyle="-|>", mutation_scale=12, color="#4a6fa5",
                connectionstyle="arc3,rad=-0.4" if skip else "arc3"))
    figure.savefig(path, dpi=DPI)
    return figure


def _layer_parents(model: keras.Model, layers: list) -> dict[int, list[int]]:
    """For each layer, the layers whose outputs it reads (the previous one when Keras does not say)."""
    known = {id(layer) for layer in layers}
    parents: dict[int, list[int]] = {}
    for index, layer in enumerate(layers):
        found = []
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in getattr(node, "input_tensors", []):
                history = getattr(tensor, "_keras_history", None)
                source = history[0] if history else None
                if source is not None and id(source) in known and id(source) not in found:
                    found.append(id(source))
        if not found and index > 0 and not isinstance(layer, keras.layers.InputLayer):
            found = [id(layers[index - 1])]
        parents[id(layer)] = found
    return parents


def _shape_text(layer: keras.layers.Layer) -> str:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return "?"
    # The batch dimension is always None: leave it out, as in 32×32×3.
    return "×".join(str(size) for size in shape[1:]) or "scalar"


def _save(figure: Figure, path: Path) -> Figure:
    figure.savefig(path, dpi=DPI)
    plt.close(figure)  # out of pyplot's registry; the object stays readable for whoever holds it
    return figure
