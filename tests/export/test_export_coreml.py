"""CoreML conversion for every preset, its metadata and structure; prediction itself needs macOS."""

import json
import sys

import pytest

from pgn import export
from pgn.export.coreml import import_coremltools

from export_helpers import PRESETS, build, needs

pytestmark = needs("coremltools")  # e.g. a GPU image without coremltools: the rest of the suite still runs


@pytest.fixture(scope="module")
def coreml_exports(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    return {name: export.export(models[name], "coreml", output_dir=out, size=64)[0] for name in PRESETS}


def _spec(path):
    return import_coremltools().models.MLModel(str(path), skip_model_load=True).get_spec()


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_converts_with_metadata(coreml_exports, name):
    r = coreml_exports[name]
    expected = "verified" if sys.platform == "darwin" else "converted-not-run"
    assert r.status == expected, r.reason
    assert r.artifact.name == f"{name}-64x64-b1-fp16.mlpackage" and r.artifact.is_dir()
    spec = _spec(r.artifact)
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= 7  # iOS16
    meta = dict(spec.description.metadata.userDefined)
    assert meta["pgn.backbone"] == ("unet" if name == "unet" else "resnet")
    assert meta["pgn.preset"] == name and meta["pgn.head"] == "constrained"
    assert meta["pgn.input_range"] == "[0, 1]" and meta["pgn.precision"] == "fp16"
    assert json.loads(meta["pgn.constants"])["beta"] == 1.1
    assert json.loads(meta["pgn.gradient"])["k"] == 2.0
    assert meta["pgn.minimum_deployment_target"] == "iOS16"
    assert [i.name for i in spec.description.input] == ["y_hat", "y"]
    assert [o.name for o in spec.description.output] == ["proxy", "residual"]


def test_manifest_says_why_it_did_not_run(coreml_exports):
    if sys.platform == "darwin":
        pytest.skip("predicts on macOS")
    r = coreml_exports["unet"]
    m = json.loads(r.manifest_path.read_text())
    assert m["status"] == "converted-not-run"
    assert m["parity"]["executed"] is False
    assert m["parity"]["reason"] == "not executed: CoreML predicts on macOS only"
    checks = m["parity"]["structural_checks"]
    assert checks["passed"] and checks["inputs"]["y_hat"]["dtype"] == "FLOAT32" and checks["fp16_ops"] > 0
    assert m["exporter"]["compute_precision"] == "FLOAT16" and m["exporter"]["minimum_deployment_target"] == "iOS16"
    assert m["gradient"]["output"] == "residual" and len(m["gradient"]["host_scale_at_export_size"]) == 3


def test_fp32_on_request(tmp_path):
    r = export.export(build("resnet4"), "coreml", output_dir=tmp_path, size=64, precision="fp32")[0]
    assert r.ok and r.artifact.name.endswith("-fp32.mlpackage")
    spec = _spec(r.artifact)
    assert [o.name for o in spec.description.output] == ["proxy", "grad"]
    assert r.parity["structural_checks"]["fp16_ops"] == 0


def test_ranged_shapes_with_dynamic(tmp_path):
    r = export.export(build("unet"), "coreml", output_dir=tmp_path, size=64, dynamic=True, max_size=(512, 512),
                      max_batch=4, deployment_target="iOS17")[0]
    assert r.ok, r.reason
    spec = _spec(r.artifact)
    ranges = [(s.lowerBound, s.upperBound) for s in spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges]
    assert ranges == [(1, 4), (3, 3), (64, 512), (64, 512)]
    assert spec.specificationVersion >= 8  # iOS17
    m = json.loads(r.manifest_path.read_text())
    assert m["shape_range"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [4, 3, 512, 512]}


def test_bad_deployment_target(tmp_path):
    with pytest.raises(export.errors.PGNError, match="deployment_target 'iOS12'.*use one of"):
        export.export(build("resnet4"), "coreml", output_dir=tmp_path, size=64, deployment_target="iOS12")


def test_warped_head_is_a_clear_error_for_coreml(tmp_path):
    with pytest.raises(export.errors.PGNError, match="warped head does not convert for CoreML"):
        export.export(build("resnet4", head="warped"), "coreml", output_dir=tmp_path, size=64)


@pytest.mark.skipif(sys.platform == "darwin", reason="CoreML predicts on macOS")
def test_coreml_runtime_is_unavailable_off_macos(coreml_exports):
    with pytest.raises(export.RuntimeUnavailable, match="CoreML predicts on macOS only"):
        export.load_runtime(coreml_exports["resnet4"].artifact)


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS")
def test_coreml_predicts_like_pytorch_on_macos(coreml_exports):
    r = coreml_exports["unet"]
    assert r.status == "verified"
    for m in r.parity["sets"].values():
        assert m["grad_cosine_min"] >= 0.999
