"""Which levels a model offers, the default, and the precision each runs in: bfloat16 only where the export chose
it for OpenVINO and the CPU has it, int8 where the export chose it and the settings allow it, float32 everywhere
else."""

from pathlib import Path

import pytest

from core.contract import LEVEL_NAMES, SIGNATURE_NAME, version_dirs
from core.cpus import cpu_flags, has_bfloat16
from core.level_table import LevelSettings, LevelTableError, UnknownLevelError, level_table
from core.versions import ModelLoadError, load_model, served_levels
from training.evaluation import bfloat16_batch_sizes
from training.openvino_export import choose_precision, kept_precision

METADATA = {
    "default_level": "accurate",
    "levels": {name: {"views": views, "val_accuracy": 0.9} for name, views in
               (("fast", 1), ("balanced", 2), ("accurate", 6))},
    "openvino": {"precision": {"fast": "float32", "balanced": "bfloat16", "accurate": "bfloat16"}},
}


def test_bfloat16_runs_the_levels_the_export_chose_it_for() -> None:
    table = level_table(METADATA, bfloat16=True)
    assert [table.precision(level) for level in table.names] == ["float32", "bfloat16", "bfloat16"]
    # OpenVINO converts the float32 signature of every level; the precision is a compile setting.
    assert table.signatures() == {"fast", "balanced", "accurate"}


def test_a_cpu_without_bfloat16_gets_float32_at_every_level() -> None:
    table = level_table(METADATA, bfloat16=False)
    assert {table.precision(level) for level in table.names} == {"float32"}


def test_int8_runs_where_the_export_chose_it_unless_the_settings_forbid_it() -> None:
    """int8 needs no CPU feature (a quantized IR runs on any CPU OpenVINO runs on); INT8=false turns it off."""
    metadata = {**METADATA, "openvino": {"precision": {"fast": "int8", "balanced": "bfloat16", "accurate": "int8"}}}
    assert [level_table(metadata, bfloat16=False).precision(level) for level in LEVEL_NAMES] == [
        "int8", "float32", "int8"]
    assert [level_table(metadata, bfloat16=True, int8=False).precision(level) for level in LEVEL_NAMES] == [
        "float32", "bfloat16", "float32"]
    # OpenVINO reads an int8 level's own IR; the SavedModel signature it would otherwise convert is the float32 one.
    assert level_table(metadata, bfloat16=False).signatures() == {"fast", "balanced", "accurate"}


def test_each_level_reports_the_figures_of_the_precision_it_is_served_in() -> None:
    """The export measured every precision it tried; the service reports the one it runs (the level's own
    entry holds TensorFlow's float32 figures), and float32's OpenVINO figures where int8 is turned off."""
    def measured(accuracy: float, ece: float, batch_64: float) -> dict:
        return {"val_accuracy": accuracy, "val_ece": ece, "images_per_second": {"batch_1": 1.0, "batch_64": batch_64}}

    metadata = {**METADATA, "openvino": {
        "precision": {"fast": "float32", "balanced": "float32", "accurate": "int8"},
        "levels": {"fast": {"float32": measured(0.91, 0.011, 400)},
                   "accurate": {"float32": measured(0.9174, 0.014, 71), "int8": measured(0.9178, 0.0138, 140)}}}}
    served = level_table(metadata, bfloat16=False).figures
    assert served["accurate"] == {"views": 6, "precision": "int8", **measured(0.9178, 0.0138, 140)}
    assert served["fast"] == {"views": 1, "precision": "float32", **measured(0.91, 0.011, 400)}
    # No OpenVINO figures for balanced: its own entry stands.
    assert served["balanced"] == {"views": 2, "val_accuracy": 0.9, "precision": "float32"}
    float32_only = level_table(metadata, bfloat16=False, int8=False).figures["accurate"]
    assert float32_only == {"views": 6, "precision": "float32", **measured(0.9174, 0.014, 71)}


def test_a_model_without_an_openvino_section_runs_float32() -> None:
    """Exported before the OpenVINO runtime: its bfloat16 figures were TensorFlow's, so they choose nothing."""
    metadata = {key: value for key, value in METADATA.items() if key != "openvino"}
    metadata["precision"] = {"timed_batch_sizes": [1, 64], "bfloat16_batch_sizes": {"accurate": [64]}}
    table = level_table(metadata, bfloat16=True)
    assert {table.precision(level) for level in table.names} == {"float32"}


def test_a_cheaper_form_is_chosen_only_faster_at_both_sizes_and_at_most_a_tenth_of_a_point_worse() -> None:
    def figures(accuracy: float, ece: float, batch_1: float, batch_64: float) -> dict:
        return {"val_accuracy": accuracy, "val_ece": ece,
                "images_per_second": {"batch_1": batch_1, "batch_64": batch_64}}

    full = figures(0.9, 0.02, 100, 200)
    assert choose_precision({"float32": full}) == "float32"
    assert choose_precision({"float32": full, "bfloat16": figures(0.9005, 0.0205, 150, 300)}) == "bfloat16"
    assert choose_precision({"float32": full, "bfloat16": figures(0.9, 0.02, 90, 300)}) == "float32"
    assert choose_precision({"float32": full, "bfloat16": figures(0.898, 0.02, 150, 300)}) == "float32"
    assert choose_precision({"float32": full, "bfloat16": figures(0.9, 0.022, 150, 300)}) == "float32"
    # int8 by the same rule; of two that pass, the faster at batch 64.
    assert choose_precision({"float32": full, "int8": figures(0.9008, 0.0195, 180, 390)}) == "int8"
    assert choose_precision({"float32": full, "int8": figures(0.8985, 0.02, 180, 390)}) == "float32"
    assert choose_precision({"float32": full, "bfloat16": figures(0.9, 0.02, 150, 300),
                             "int8": figures(0.9, 0.02, 140, 390)}) == "int8"
    assert choose_precision({"float32": full, "bfloat16": figures(0.9, 0.02, 150, 300),
                             "int8": figures(0.9, 0.0215, 200, 500)}) == "bfloat16"
    # Worse by 0.1 points exactly still passes; better by any amount is no reason to refuse.
    assert choose_precision({"float32": full, "int8": figures(0.899, 0.021, 180, 390)}) == "int8"
    assert choose_precision({"float32": full, "int8": figures(0.9018, 0.0182, 180, 390)}) == "int8"


def test_a_kept_precision_stands_unless_it_measured_more_than_a_tenth_of_a_point_worse_here() -> None:
    def figures(accuracy: float, ece: float) -> dict:
        return {"val_accuracy": accuracy, "val_ece": ece, "images_per_second": {"batch_1": 1, "batch_64": 1}}

    measured = {"float32": figures(0.9, 0.02), "int8": figures(0.899, 0.021)}
    # Slower here is no reason to drop it: the source timed it on the CPUs it is meant for.
    assert kept_precision(measured, "int8") == "int8"
    assert kept_precision({**measured, "int8": figures(0.8985, 0.02)}, "int8") == "float32"
    assert kept_precision({**measured, "int8": figures(0.9, 0.0215)}, "int8") == "float32"
    # bfloat16 not measured (this CPU has no bfloat16 instructions): kept on the source's measurement.
    assert kept_precision(measured, "bfloat16") == "bfloat16"
    assert kept_precision(measured, "float32") == "float32"


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


@pytest.mark.parametrize(("change", "says"), [
    ({"default_level": "turbo"}, "'default_level' is 'turbo', but the levels are fast, balanced, accurate"),
    ({"levels": {"Fast": {"views": 1}}}, "'levels' names none of fast, balanced, accurate (it has Fast)"),
    ({"levels": {"fast": "x"}, "default_level": "fast"}, "'levels.fast' must be an object of figures, not 'x'"),
    ({"levels": {"fast": {"views": "one"}}, "default_level": "fast"},
     "'levels.fast.views' is 'one': it must be a whole number"),
    ({"levels": {"fast": {"val_accuracy": True}}, "default_level": "fast"}, "'levels.fast.val_accuracy' is True"),
    ({"levels": {"fast": {"images_per_second": {"batch_1": "fast"}}}, "default_level": "fast"},
     "'levels.fast.images_per_second' is {'batch_1': 'fast'}: it must be an object of numbers"),
    ({"openvino": {"precision": {"fast": ["int8"]}}}, "'openvino.precision.fast' must be a precision's name"),
    ({"openvino": ["fast"]}, "'openvino' must be an object, not ['fast']"),
    ({"openvino": {"precision": ["int8"]}}, "'openvino.precision' must be an object"),
    ({"openvino": {"levels": {"fast": [1]}}}, "'openvino.levels.fast' must map each precision to its figures"),
    ({"openvino": {"sha256": {"openvino/fast.xml": "ABC"}}}, "'openvino.sha256' must map each IR file to its sha256"),
    ({"openvino": {"sha256": ["openvino/fast.xml"]}}, "'openvino.sha256' must map each IR file to its sha256"),
], ids=["default-not-offered", "no-known-level", "level-not-object", "views-text", "accuracy-bool",
        "images-per-second-text", "precision-value-list", "openvino-list", "precision-list", "measured-list",
        "sha256-not-hex", "sha256-list"])
def test_levels_of_the_wrong_shape_are_refused_naming_the_key(change: dict, says: str, tmp_path: Path) -> None:
    """Each was a TypeError at start-up (no fallback to an older version), a 500 from /metadata after a swap, or
    (the default level) a model swapped in that answered every request without ?level= with 422."""
    metadata = {**METADATA, **change}
    with pytest.raises(LevelTableError) as raised:
        level_table(metadata, bfloat16=True)
    assert str(raised.value).startswith(says), raised.value
    with pytest.raises(ModelLoadError) as refused:
        served_levels(tmp_path, metadata, LevelSettings())
    assert refused.value.reason == "contract"
    assert str(refused.value) == f"{tmp_path / 'metadata.json'}: {raised.value}. Re-export the model."


@pytest.mark.parametrize("openvino", [["x"], {"sha256": ["openvino/accurate.xml"]}], ids=["list", "sha256-list"])
def test_a_model_exported_before_levels_has_its_openvino_section_checked_too(openvino: object) -> None:
    """Its IR is read (and hashed) all the same: a malformed section was an AttributeError, not the key."""
    with pytest.raises(LevelTableError, match="'openvino"):
        level_table({"tta": "flip-translate", "openvino": openvino}, bfloat16=True)


def test_a_model_exported_before_levels_offers_its_serving_default() -> None:
    table = level_table({"tta": "flip-translate", "val_accuracy": 0.9174}, bfloat16=True)
    assert table.names == ("accurate",) and table.default == "accurate"
    assert table.signature("accurate") == SIGNATURE_NAME and table.precision("accurate") == "float32"
    with pytest.raises(UnknownLevelError):
        table.resolve("fast")


def test_bfloat16_batch_sizes_are_those_where_it_measured_faster() -> None:
    speeds = {"accurate": {1: {"float32": 100.0, "bfloat16": 60.0}, 64: {"float32": 150.0, "bfloat16": 200.0}}}
    assert bfloat16_batch_sizes(speeds) == {"accurate": [64]}


def test_loading_on_a_cpu_with_bfloat16_compiles_the_chosen_levels_in_bfloat16(trained_model_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """The real loader, told the CPU has AMX and the export chose bfloat16 for one level: that level is compiled
    with OpenVINO's bf16 hint, the others with f32; told the CPU lacks it, every level is f32."""
    import json
    import shutil

    version = tmp_path / "shapes" / "1"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], version)
    metadata = json.loads((version / "metadata.json").read_text())
    # Every level set: the export chose each level's precision by timing it, and may have chosen any.
    metadata["openvino"]["precision"] = {"fast": "float32", "balanced": "bfloat16", "accurate": "float32"}
    (version / "metadata.json").write_text(json.dumps(metadata))

    def hints(flags: frozenset[str]) -> dict[str, str]:
        model = load_model(version, level_settings=LevelSettings(cpu_flags=flags))
        return {level: model.runtime.precision_hint(level) for level in model.level_names}

    assert hints(frozenset({"avx512f", "amx_bf16"})) == {"fast": "f32", "balanced": "bf16", "accurate": "f32"}
    assert hints(frozenset({"avx2", "fma"})) == {"fast": "f32", "balanced": "f32", "accurate": "f32"}


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
