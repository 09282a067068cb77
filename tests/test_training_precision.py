"""bfloat16 training only where the CPU computes it: emulated, it is ten times slower than float32."""

from training.recipes import RECIPES
from training.train import training_precision


def test_a_bfloat16_recipe_trains_in_bfloat16_only_on_a_cpu_with_the_instructions() -> None:
    airbench = RECIPES["airbench"]
    assert airbench.mixed_bfloat16
    assert training_precision(airbench, frozenset({"avx2", "amx_bf16"})) == "mixed_bfloat16"
    assert training_precision(airbench, frozenset({"avx512f", "avx512_bf16"})) == "mixed_bfloat16"
    assert training_precision(airbench, frozenset({"avx", "avx2"})) == "float32"


def test_a_float32_recipe_stays_float32_everywhere() -> None:
    assert training_precision(RECIPES["tutorial-rgb"], frozenset({"amx_bf16"})) == "float32"
