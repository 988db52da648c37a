"""The format table, option validation and "did you mean" errors: all fail before anything is written."""

import pytest

from pgn import export
from pgn.export.formats import FORMATS, check_options, options_for, resolve_targets
from pgn.export.options import ExportOptions, parse_size
from pgn.errors import PGNError


def test_table_rows_are_complete():
    assert set(FORMATS) == {"onnx", "tensorrt", "coreml", "executorch", "executorch-coreml"}
    for fmt in FORMATS.values():
        assert fmt.suffix.startswith(".") and fmt.default_precision in ("fp32", "fp16")
    assert FORMATS["executorch"].precisions == ("fp32", "int8")
    assert FORMATS["tensorrt"].verify_device == "cuda" and FORMATS["onnx"].verify_device == "cpu"
    assert FORMATS["coreml"].default_precision == "fp16" and FORMATS["onnx"].default_precision == "fp32"
    assert FORMATS["executorch-coreml"].precisions == ("fp16", "fp32")


def test_all_expands_in_table_order():
    assert [f.name for f in resolve_targets("all")] == ["onnx", "tensorrt", "coreml", "executorch", "executorch-coreml"]
    assert [f.name for f in resolve_targets("CoreML")] == ["coreml"]


@pytest.mark.parametrize("typo, suggestion", [("onxx", "onnx"), ("coreml2", "coreml"), ("tensorrtt", "tensorrt"), ("trt", None)])
def test_unknown_target_raises_with_did_you_mean(typo, suggestion):
    with pytest.raises(PGNError) as e:
        resolve_targets(typo)
    msg = str(e.value)
    assert "unknown export target" in msg and "Valid targets: onnx, tensorrt, coreml, executorch, executorch-coreml, all" in msg
    if suggestion:
        assert f"Did you mean '{suggestion}'" in msg


def test_unknown_target_never_switches(models, tmp_path):
    with pytest.raises(PGNError, match="Did you mean 'onnx'"):
        export.export(models["resnet4"], "onxx", output_dir=tmp_path, size=64)
    assert not any(tmp_path.iterdir())


def test_option_a_format_does_not_take_is_an_error(models, tmp_path):
    with pytest.raises(PGNError, match=r"option opset=17 is not supported by target 'coreml'; it applies to onnx, tensorrt"):
        export.export(models["unet"], "coreml", output_dir=tmp_path, size=64, opset=17)
    with pytest.raises(PGNError, match="deployment_target.*not supported by target 'onnx'"):
        export.export(models["unet"], "onnx", output_dir=tmp_path, size=64, deployment_target="iOS17")
    with pytest.raises(PGNError, match="not supported by target 'coreml'"):  # "all" is strict too
        export.export(models["unet"], "all", output_dir=tmp_path, size=64, legacy_exporter=True)
    assert not any(tmp_path.iterdir())


def test_unknown_keyword_lists_the_known_ones(models, tmp_path):
    with pytest.raises(PGNError, match="unknown export option.*fp16_mode.*known are"):
        export.export(models["unet"], "onnx", output_dir=tmp_path, size=64, fp16_mode=True)


@pytest.mark.parametrize("size, msg", [((100, 96), "height must be a multiple of 32; nearest valid height: 96 or 128"),
                                       ((224, 230), "width must be a multiple of 32")])
def test_size_not_allowed_by_unet(models, tmp_path, size, msg):
    with pytest.raises(PGNError, match=msg):
        export.export(models["unet"], "onnx", output_dir=tmp_path, size=size)
    assert not any(tmp_path.iterdir())


def test_size_not_allowed_by_resnet(models, tmp_path):
    with pytest.raises(PGNError, match="height must be a multiple of 2"):
        export.export(models["resnet4"], "coreml", output_dir=tmp_path, size=(65, 64))
    assert not any(tmp_path.iterdir())


def test_bad_values(models, tmp_path):
    with pytest.raises(PGNError, match="unknown precision 'bf16': use one of fp32, fp16"):
        export.export(models["unet"], "onnx", output_dir=tmp_path, size=64, precision="bf16")
    with pytest.raises(PGNError, match="batch must be a positive integer"):
        ExportOptions(batch=0)
    with pytest.raises(PGNError, match="pass dynamic=True"):
        ExportOptions(max_size=(512, 512))
    with pytest.raises(PGNError, match="must lie within"):
        ExportOptions(size=(256, 256), dynamic=True, max_size=(128, 128)).shape_range(4)
    with pytest.raises(PGNError, match="opset must be an integer"):
        ExportOptions(opset=7)
    with pytest.raises(PGNError, match="unknown precision 'bf16'"):
        check_options(FORMATS["onnx"], {"precision": "bf16"})
    assert not any(tmp_path.iterdir())


def test_sizes_parse():
    assert parse_size(224) == (224, 224)
    assert parse_size("256x320") == (256, 320)
    assert parse_size([64, 96]) == (64, 96)
    with pytest.raises(PGNError):
        parse_size("big")


def test_default_precision_comes_from_the_format(tmp_path):
    opts = ExportOptions()
    assert options_for(FORMATS["coreml"], opts, tmp_path).precision == "fp16"
    assert options_for(FORMATS["onnx"], opts, tmp_path).precision == "fp32"
    assert options_for(FORMATS["coreml"], ExportOptions(precision="fp32"), tmp_path).precision == "fp32"


def test_dynamic_range_defaults_respect_the_size_multiple():
    rng = ExportOptions(size=(224, 224), batch=2, dynamic=True).shape_range(32)
    assert rng.min == (1, 3, 64, 64) and rng.opt == (2, 3, 224, 224) and rng.max == (8, 3, 1024, 1024)
