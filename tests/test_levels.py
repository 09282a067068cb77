"""Which signature answers a batch: levels, the default, bfloat16 per batch size, and float32 without bfloat16."""

from pathlib import Path

import numpy as np
import pytest

from core.contract import SIGNATURE_NAME, version_dirs
from core.cpus import cpu_flags, has_bfloat16
from core.level_table import LevelSettings, UnknownLevelError, level_table
from core.versions import ModelLoadError, load_model
from training.evaluation import bfloat16_batch_sizes

METADATA = {
    "default_level": "accurate",
    "levels": {name: {"views": views, "val_accuracy": 0.9} for name, views in
               (("fast", 1), ("balanced", 2), ("accurate", 6))},
    "precision": {"timed_batch_sizes": [1, 2, 4, 8, 16, 32, 64],
                  "bfloat16_batch_sizes": {"fast": [], "balanced": [32, 64], "accurate": [8, 16, 32, 64]}},
}


def test_bfloat16_is_used_from_the_timed_batch_sizes_where_it_was_faster() -> None:
    table = level_table(METADATA, bfloat16=True)
    assert [table.signature("accurate", n) for n in (1, 7, 8, 12, 64, 100)] == [
        "accurate", "accurate", "accurate_bfloat16", "accurate_bfloat16", "accurate_bfloat16", "accurate_bfloat16"]
    assert [table.signature("balanced", n) for n in (16, 31, 32)] == ["balanced", "balanced", "balanced_bfloat16"]
    assert {table.signature("fast", n) for n in range(1, 65)} == {"fast"}
    assert table.signatures() == {"fast", "balanced", "accurate", "balanced_bfloat16", "accurate_bfloat16"}


def test_a_cpu_without_bfloat16_gets_float32_at_every_batch_size() -> None:
    table = level_table(METADATA, bfloat16=False)
    for level in ("fast", "balanced", "accurate"):
        assert {table.signature(level, n) for n in range(1, 129)} == {level}
    assert table.signatures() == {"fast", "balanced", "accurate"}


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    with_bf16 = tmp_path / "with"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert has_bfloat16(cpu_flags(with_bf16)) and not has_bfloat16(cpu_flags(without))
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_levels_resolve_and_refuse_unknown_names() -> None:
    table = level_table(METADATA, bfloat16=True)
    assert table.resolve(None) == "accurate" and table.resolve("fast") == "fast"
    with pytest.raises(UnknownLevelError, match="'fast', 'balanced', 'accurate'"):
        table.resolve("turbo")
    assert level_table(METADATA, bfloat16=True, default="balanced").resolve(None) == "balanced"


def test_a_model_exported_before_levels_offers_its_serving_default() -> None:
    table = level_table({"tta": "flip-translate", "val_accuracy": 0.9174}, bfloat16=True)
    assert table.names == ("accurate",) and table.default == "accurate"
    assert table.signature("accurate", 64) == SIGNATURE_NAME
    with pytest.raises(UnknownLevelError):
        table.resolve("fast")


def test_bfloat16_batch_sizes_are_those_where_it_measured_faster() -> None:
    speeds = {"accurate": {1: {"float32": 100.0, "bfloat16": 60.0}, 64: {"float32": 150.0, "bfloat16": 200.0}}}
    assert bfloat16_batch_sizes(speeds) == {"accurate": [64]}


def test_loading_on_a_cpu_without_bfloat16_serves_float32(trained_model_dir: Path) -> None:
    """The real loader, told the CPU has AVX2 but no bfloat16: every batch size runs the float32 signature."""
    path = version_dirs(trained_model_dir)[-1][1]
    model = load_model(path, level_settings=LevelSettings(cpu_flags=frozenset({"avx2", "fma"})))
    assert model.level_table.bfloat16_batch_sizes == {}
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for level in model.level_names:
        outputs = model.saved_model.signatures[level](images=images)
        expected = np.concatenate([outputs["probabilities"].numpy(), outputs["feature_norm"].numpy()[:, None]], axis=1)
        np.testing.assert_array_equal(model.predict(images, level), expected)  # the norm follows the ten
    assert model.default_level == "fast"


def test_a_default_level_the_model_lacks_stops_startup_with_the_fix(trained_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    legacy = tmp_path / "shapes" / "1"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], legacy)
    metadata = json.loads((legacy / "metadata.json").read_text())
    del metadata["levels"]
    (legacy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match=r"DEFAULT_LEVEL=accurate.*offers fast"):
        load_model(legacy, level_settings=LevelSettings(default_level="accurate"))
    assert load_model(legacy).level_names == ("fast",)
