"""Out-of-distribution ("none of these") scores from a model's own outputs, and the threshold on them.

Higher scores mean less like the ten classes. bench/ood.py measures the candidates side by side
(docs/ood.md). Today's exports compute the score in the graph, as every signature's ``ood_score`` output
(core.contract.OOD_SCORE_NAME; LAYER_STATISTICS, fitted by training.ood_export): scores from the probabilities
alone miss most digits and text, the penultimate-feature norm of versions 5-9 missed most digits on version 9.
Versions 5-9 output ``feature_norm`` instead (core.contract.FEATURE_NORM_NAME), scored ``1 / (1 + feature_norm)``
(FEATURE_NORM); a model with neither gets ``1 - max probability``. The export fits the threshold on the
validation split (95% kept) per level, and again per level served in int8 or bfloat16 on that precision's own
scores (bench/ood_served.py measures both as served), and writes them into metadata.json under ``ood``, with
the score's name; OOD_THRESHOLD overrides them. The served rows are the ten probabilities, then the model's
own score when it has one (core.versions.LoadedModel.predict; the runtime turns a feature norm into its score).
"""

from typing import Any

import numpy as np

from core.contract import FLOAT32, metadata_number

LAYER_STATISTICS = "layer_statistics"
FEATURE_NORM = "feature_norm"
MAX_PROBABILITY = "max_probability"
# The scores a model computes itself: the served row's eleventh value is one of them, the model's own.
MODEL_SCORES = (LAYER_STATISTICS, FEATURE_NORM)
MODEL_OWN = "model_own"
# Share of in-distribution (validation) images the fitted threshold keeps as "in".
KEEP_IN_DISTRIBUTION = 0.95
METADATA_KEY = "ood"
# Under METADATA_KEY: precision -> level -> threshold, for the levels an export serves in int8 or bfloat16.
PRECISION_THRESHOLDS_KEY = "thresholds_by_precision"
NUM_CLASSES = 10


def max_probability_score(probabilities: np.ndarray) -> np.ndarray:
    """``1 - max p`` per row: the maximum softmax probability baseline (Hendrycks & Gimpel 2017)."""
    return 1.0 - np.max(probabilities, axis=-1)


def feature_norm_score(feature_norms: np.ndarray) -> np.ndarray:
    """``1 / (1 + ||features||)``: in (0, 1], higher for weaker penultimate activations."""
    return 1.0 / (1.0 + np.asarray(feature_norms, dtype=np.float64))


def served_score(rows: np.ndarray) -> str:
    """Which score ``rows`` (n, 10) or (n, 11) carry: MODEL_OWN when the model returns one, else MAX_PROBABILITY."""
    return MODEL_OWN if rows.shape[-1] > NUM_CLASSES else MAX_PROBABILITY


def ood_scores(rows: np.ndarray) -> np.ndarray:
    """The served score of each row: ten probabilities, then the model's own score if it computes one."""
    if rows.shape[-1] > NUM_CLASSES:
        return np.asarray(rows[..., NUM_CLASSES], dtype=np.float64)
    return max_probability_score(rows[..., :NUM_CLASSES])


def fit_threshold(in_distribution_scores: np.ndarray, keep: float = KEEP_IN_DISTRIBUTION) -> float:
    """The score at or below which ``keep`` of ``in_distribution_scores`` fall: those answers are "in"."""
    if len(in_distribution_scores) == 0:
        raise ValueError("no in-distribution scores to fit a threshold on")
    return float(np.quantile(np.asarray(in_distribution_scores, dtype="float64"), keep, method="higher"))


def is_in_distribution(score: float, threshold: float | None) -> bool | None:
    """True when ``score`` is within ``threshold``; None when there is no threshold to judge by."""
    if threshold is None:
        return None
    return bool(score <= threshold)


def threshold_metadata(score: str, level_scores: dict[str, np.ndarray],
                       keep: float = KEEP_IN_DISTRIBUTION) -> dict[str, Any]:
    """The ``ood`` block of metadata.json: the score's name and one threshold per accuracy level, fitted on
    each level's validation scores (a probability score differs by level, the feature norm does not)."""
    return {"score": score, "keep_in_distribution": keep, "fitted_on": "validation split",
            "images": len(next(iter(level_scores.values()))),
            "thresholds": {level: fit_threshold(scores, keep) for level, scores in level_scores.items()}}


def model_threshold(metadata: dict[str, Any], score: str, level: str, precision: str = FLOAT32) -> float | None:
    """The threshold metadata.json holds for ``level`` computed in ``precision``, if it was fitted for ``score``
    (MODEL_OWN: for the score the model computes, which its metadata names: both come from the same export).
    A level served in int8 or bfloat16 has its own threshold where the export could measure that precision;
    else, and for exports before those, the float32 one."""
    block = metadata.get(METADATA_KEY)
    if not isinstance(block, dict):
        return None
    fitted = block.get("score")
    if fitted != score and not (score == MODEL_OWN and fitted in MODEL_SCORES):
        return None
    by_precision = block.get(PRECISION_THRESHOLDS_KEY)
    served = by_precision.get(precision) if isinstance(by_precision, dict) else None
    if isinstance(served, dict) and metadata_number(served.get(level)) is not None:
        return metadata_number(served.get(level))
    thresholds = block.get("thresholds")
    value = thresholds.get(level) if isinstance(thresholds, dict) else None
    return metadata_number(value)
