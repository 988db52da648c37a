"""The executorch-coreml target: a .pte with ExecuTorch's Core ML delegate; running it needs ExecuTorch's Apple build."""

import json
import platform
from pathlib import Path

import pytest

from pgn import export
import pgn
from pgn.export.formats import target_of

from pgn.export.executorch_coreml import TARGET, ExecuTorchCoreMLTarget, method_io

from export_helpers import needs

pytestmark = needs("executorch", "coremltools")

#: ExecuTorch's Core ML backend ships in its Apple builds only: there a program is verified, elsewhere it is
#: written and checked structurally, and the result says why it did not run.
ON_APPLE = platform.system() == "Darwin"
EXPECTED_STATUS = "verified" if ON_APPLE else "converted-not-run"


@pytest.fixture(scope="module")
def programs(models, tmp_path_factory):
    """ResNet-4 fp16 (the default) and fp32, and the UNet fp32, at 64²."""
    out = tmp_path_factory.mktemp("et-coreml")
    return {
        "resnet4-fp16": export.export(models["resnet4"], "executorch-coreml", output_dir=out, size=64)[0],
        "resnet4-fp32": export.export(models["resnet4"], "executorch-coreml", output_dir=out, size=64, precision="fp32")[0],
        "unet-fp32": export.export(models["unet"], "executorch-coreml", output_dir=out, size=64, precision="fp32")[0],
    }


@pytest.mark.parametrize("key", ["resnet4-fp16", "resnet4-fp32", "unet-fp32"])
def test_programs_hold_one_coreml_delegate_and_record_it(programs, key):
    result = programs[key]
    assert result.status == EXPECTED_STATUS, result.reason
    name, precision = key.split("-")
    assert result.artifact.name == f"{name}-64x64-b1-{precision}.coreml.pte"
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["target"] == "executorch-coreml" and manifest["target_info"]["delegate"] == "CoreMLBackend"
    assert manifest["exporter"]["delegates"] == {"CoreMLBackend": 1} and manifest["exporter"]["outside_delegate"] == {}
    assert manifest["exporter"]["compute_precision"] == {"fp16": "FLOAT16", "fp32": "FLOAT32"}[precision]
    # fp16 hands the host the residual to scale in fp32, as the CoreML target does
    assert [o["name"] for o in manifest["outputs"]] == (["proxy", "residual"] if precision == "fp16" else ["proxy", "grad"])
    checks = manifest["parity"]["structural_checks"]
    assert checks["passed"] and checks["inputs"] == checks["outputs"] == [{"shape": [1, 3, 64, 64], "dtype": "float32"}] * 2
    if not ON_APPLE:
        assert "no CoreMLBackend" in result.reason and "\n" not in result.reason


def test_fp16_weights_are_half_the_size(programs):
    fp16, fp32 = programs["resnet4-fp16"].size_mb, programs["resnet4-fp32"].size_mb
    assert 0.4 < fp16 / fp32 < 0.6, (fp16, fp32)


def test_the_suffix_names_the_target(programs):
    assert target_of(programs["unet-fp32"].artifact) is TARGET
    assert target_of(Path("resnet4-64x64-b1-fp32.pte")).name == "executorch"


@pytest.mark.skipif(ON_APPLE, reason="ExecuTorch's Apple builds have the Core ML backend")
def test_loading_without_the_coreml_backend_is_one_line(programs):
    with pytest.raises(export.RuntimeUnavailable) as info:
        export.load_runtime(programs["resnet4-fp32"].artifact)
    message = str(info.value)
    assert "CoreMLBackend" in message and "iOS or macOS" in message and "\n" not in message


def test_a_program_of_another_shape_fails_the_structural_checks(models, programs):
    from pgn.export.options import ExportOptions

    with pytest.raises(pgn.PGNError, match=r"inputs are .*expected two float32 \[1, 3, 32, 32\]"):
        ExecuTorchCoreMLTarget().structural_checks(programs["resnet4-fp32"].artifact, ExportOptions(size=(32, 32)), models["resnet4"])
    inputs, outputs = method_io(programs["resnet4-fp32"].artifact.read_bytes())
    assert len(inputs) == len(outputs) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"dynamic": True}, "fixed shapes: drop --dynamic"),
    ({"deployment_target": "iOS14"}, "unknown or too old deployment_target"),
])
def test_options_it_cannot_honour_are_refused_before_writing(models, tmp_path, kwargs, message):
    with pytest.raises(pgn.PGNError, match=message):
        export.export(models["resnet4"], "executorch-coreml", output_dir=tmp_path, size=64, **kwargs)
    assert not any(tmp_path.iterdir())


def test_the_warped_head_is_refused_in_one_line(tmp_path):
    model = pgn.build("resnet4", head="warped")
    with pytest.raises(pgn.PGNError, match="warped head does not convert for Core ML"):
        export.export(model, "executorch-coreml", output_dir=tmp_path, size=64)
