"""Out-of-distribution ("none of these") scores from a model's own outputs, and the threshold on them.

Higher scores mean less like the ten classes. bench/ood.py measured the candidates side by side
(docs/ood.md): scores from the probabilities alone (maximum probability, entropy, the max-logit that
softmax keeps) reach AUROC 0.82-0.89 against digits, text and noise, the L2 norm of the penultimate
features 0.93-0.96 (such images barely excite the last convolutions). So an export adds the
``feature_norm`` output (core.contract.FEATURE_NORM_NAME) to every level's signature, and the score is
``1 / (1 + feature_norm)``; a model exported without that output gets ``1 - max probability``. The export
fits the threshold on the validation split (95% kept) and writes it into metadata.json under ``ood``, with
the score's name; OOD_THRESHOLD overrides it. The served rows are the ten probabilities, then the feature
norm when the model has it (core.versions.LoadedModel.predict).
"""

from typing import Any

import numpy as np

from core.contract import metadata_number

FEATURE_NORM = "feature_norm"
MAX_PROBABILITY = "max_probability"
# Share of in-distribution (validation) images the fitted threshold keeps as "in".
KEEP_IN_DISTRIBUTION = 0.95
METADATA_KEY = "ood"
NUM_CLASSES = 10


def max_probability_score(probabilities: np.ndarray) -> np.ndarray:
    """``1 - max p`` per row: the maximum softmax probability baseline (Hendrycks & Gimpel 2017)."""
    return 1.0 - np.max(probabilities, axis=-1)


def feature_norm_score(feature_norms: np.ndarray) -> np.ndarray:
    """``1 / (1 + ||features||)``: in (0, 1], higher for weaker penultimate activations."""
    return 1.0 / (1.0 + np.asarray(feature_norms, dtype=np.float64))


def score_name(rows: np.ndarray) -> str:
    """Which score ``rows`` (n, 10) or (n, 11) allow: the feature norm when the model returns it."""
    return FEATURE_NORM if rows.shape[-1] > NUM_CLASSES else MAX_PROBABILITY


def ood_scores(rows: np.ndarray) -> np.ndarray:
    """The served score of each row: ten probabilities, then the feature norm if the model exports it."""
    if rows.shape[-1] > NUM_CLASSES:
        return feature_norm_score(rows[..., NUM_CLASSES])
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


def model_threshold(metadata: dict[str, Any], score: str, level: str) -> float | None:
    """The threshold metadata.json holds for ``level``, if it was fitted for ``score``."""
    block = metadata.get(METADATA_KEY)
    if not isinstance(block, dict) or block.get("score") != score:
        return None
    thresholds = block.get("thresholds")
    value = thresholds.get(level) if isinstance(thresholds, dict) else None
    return metadata_number(value)
