"""bench/paired_accuracy.py's statistics: the images only one model gets right decide the difference."""
import numpy as np
import pytest

from bench.paired_accuracy import paired_difference


def test_a_one_sided_disagreement_is_significant_and_its_error_comes_from_the_discordant_images() -> None:
    first = np.array([True] * 80 + [False] * 20)
    second = first.copy()
    second[80:90] = True  # ten images only the second gets right
    paired = paired_difference(first, second)
    assert (paired.only_first, paired.only_second, paired.images) == (0, 10, 100)
    assert paired.difference == pytest.approx(0.10)
    assert paired.standard_error == pytest.approx(np.sqrt((10 / 100 - 0.10**2) / 100))  # 0.03
    assert paired.p_value == pytest.approx(2 / 2**10)


def test_an_even_split_of_disagreements_is_no_evidence_either_way() -> None:
    first = np.array([True, True, False, False, True, False])
    second = np.array([True, False, True, True, True, False])
    paired = paired_difference(first, second)
    assert (paired.only_first, paired.only_second) == (1, 2)
    assert paired.difference == pytest.approx(1 / 6)
    assert paired.p_value == 1.0  # (C(3,0) + C(3,1)) / 2**3, doubled and capped
    same = paired_difference(first, first)
    assert (same.difference, same.standard_error, same.p_value) == (0.0, 0.0, 1.0)
