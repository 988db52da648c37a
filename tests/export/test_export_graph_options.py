"""Graph options (row bands, decoder conv forms, transposed upsample convs): same numbers as the plain backbone."""

import copy
import json

import pytest
import torch

from pgn.export.graph import ExportGraph, describe_graph
from pgn.export.graph_options import GraphOptions
from pgn.export.resnet_graph import ExportResNet
from pgn.export.unet_graph import ExportUNet, band_bounds
from pgn.errors import PGNError

from export_helpers import build, needs

#: fp32 graph against the float64 plain backbone, relative to the output's largest magnitude.
MAX_REL = 1e-5


@pytest.fixture(scope="module")
def unet():
    return build("unet")


@pytest.fixture(scope="module")
def small_unet():
    """A two-level UNet, 8/16 channels wide, for the export tests: an export's cost grows with the graph's operator
    count, and this one has the preset's structure where the options act (bands at levels 0 and 1, the split decoder
    form applying at level 0 only) at a fraction of its operators."""
    return build("unet", down_channels=(8, 16), up_channels=(8, 16), top_channels=8)


def _rel_error(module, backbone, x) -> float:
    with torch.no_grad():
        ref = copy.deepcopy(backbone).double()(x.double())
        out = module(x)
    return float((out.double() - ref).abs().max() / ref.abs().max())


def _input(batch, height, width, seed=0):
    return torch.randn(batch, 6, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch, height, width", [(1, 32, 32), (1, 64, 96), (2, 96, 32), (1, 160, 64)])
@pytest.mark.parametrize("text", ["default", "band_rows=16", "band_rows=7", "band_rows=1,band_levels=3",
                                  "band_rows=16,band_levels=5,decoder_conv=split", "band_rows=5,decoder_conv=depthwise",
                                  "decoder_conv=split", "band_rows=1000"])
def test_unet_forms_match_the_plain_backbone(unet, batch, height, width, text):
    form = ExportUNet(unet.backbone, GraphOptions.parse(text), (height, width))
    assert _rel_error(form, unet.backbone, _input(batch, height, width)) <= MAX_REL


def test_bands_really_split_the_rows(unet):
    """The cases above do band: not-dividing band heights, several levels, and a level of one band left whole."""
    form = ExportUNet(unet.backbone, GraphOptions.parse("band_rows=7,band_levels=3"), (64, 96))
    assert sorted(form.bands) == [0, 1, 2]
    assert form.bands[0] == band_bounds(64, 7) and len(form.bands[0]) == 10
    assert {b - a for a, b in form.bands[0]} == {6, 7}
    applied, not_applied = ExportUNet(unet.backbone, GraphOptions.parse("band_rows=1000"), (64, 96)).describe()
    assert "bands" not in applied and "one band of 1000 rows" in not_applied["band_rows"]


def test_exactness_check_catches_wrong_upsampling_weights(unet):
    form = ExportUNet(unet.backbone, GraphOptions.parse("band_rows=16"), (64, 64))
    form.row_weights_0.copy_(form.row_weights_0.flip(-2))  # the even/odd row weights swapped
    assert _rel_error(form, unet.backbone, _input(1, 64, 64)) > 100 * MAX_REL


@pytest.mark.parametrize("height, width", [(8, 8), (32, 48), (20, 6)])
def test_resnet_transposed_upsample_conv_matches(height, width):
    model = build("resnet4")
    form = ExportResNet(model.backbone, GraphOptions.parse("upsample_conv=transposed"))
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in form.modules())
    assert not any(isinstance(m, torch.nn.Upsample) for m in form.modules())
    assert _rel_error(form, model.backbone, _input(2, height, width)) <= MAX_REL


@pytest.mark.parametrize("name, text", [("unet", "band_rows=16,decoder_conv=split"), ("resnet4", "upsample_conv=transposed")])
def test_export_graph_with_options_matches_the_model(name, text):
    model = build(name)
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.rand(2, 3, 64, 96, generator=g), torch.rand(2, 3, 64, 96, generator=g)
    with torch.no_grad():
        ref = copy.deepcopy(model).double().outputs(y_hat.double(), y.double())
        proxy, grad = ExportGraph(model, size=(64, 96), graph_options=GraphOptions.parse(text))(y_hat, y)
    torch.testing.assert_close(grad.double(), ref.grad, rtol=0, atol=MAX_REL * float(ref.grad.abs().max()))
    torch.testing.assert_close(proxy.double(), ref.proxy, rtol=0, atol=MAX_REL * float(ref.proxy.abs().max()))


def test_description_says_what_applied_and_why_not(unet):
    options = GraphOptions.parse("band_rows=16,decoder_conv=split")
    fixed = describe_graph(unet.backbone, options, (64, 96))
    assert fixed["requested"]["band_rows"] == 16
    assert fixed["applied"]["bands"]["level 0"] == [[0, 16], [16, 32], [32, 48], [48, 64]]
    assert fixed["applied"]["decoder_conv"] == {"level 0": "split"}
    assert "ResNet" in fixed["not_applied"]["upsample_conv"]
    dynamic = describe_graph(unet.backbone, options, None)
    assert "bands" not in dynamic["applied"] and "dynamic" in dynamic["not_applied"]["band_rows"]
    resnet = describe_graph(build("resnet4").backbone, options, (64, 96))
    assert set(resnet["not_applied"]) == {"band_rows", "band_levels", "decoder_conv"}
    assert resnet["applied"] == {"upsample_conv": "plain"}


@pytest.mark.parametrize("text, message", [("band_rowz=3", "band_rows, band_levels"), ("band_rows=x", "integer"),
                                           ("band_rows=-1", "non-negative"), ("decoder_conv=fused", "grouped, depthwise, split"),
                                           ("upsample_conv=polyphase", "plain, transposed"), ("band_rows", "NAME=VALUE")])
def test_bad_graph_options_are_one_line_errors(text, message):
    with pytest.raises(PGNError, match=message) as info:
        GraphOptions.parse(text)
    assert "\n" not in str(info.value)


def test_parse_keeps_unnamed_fields_and_plain_turns_everything_off():
    options = GraphOptions.parse("decoder_conv=split")
    assert options.band_rows == GraphOptions().band_rows and options.decoder_conv == "split"
    assert GraphOptions.parse("plain") == GraphOptions(band_rows=0, decoder_conv="grouped", upsample_conv="plain")
    assert GraphOptions.parse(str(options)) == options


def test_onnx_export_with_options_passes_parity_and_records_them(small_unet, tmp_path):
    from pgn.export import export

    result = export(small_unet, "onnx", output_dir=tmp_path, size=(64, 96), graph_options="band_rows=16,decoder_conv=split")[0]
    assert result.status == "verified", result.reason
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["graph"]["applied"]["bands"]["level 0"][0] == [0, 16]
    assert manifest["graph"]["applied"]["decoder_conv"] == {"level 0": "split"}
    dynamic = export(small_unet, "onnx", output_dir=tmp_path / "dyn", size=(64, 96), dynamic=True, verify=False,
                     graph_options="band_rows=16")[0]
    assert "dynamic" in json.loads(dynamic.manifest_path.read_text())["graph"]["not_applied"]["band_rows"]


needs_executorch = needs("executorch")


@needs_executorch
def test_executorch_banded_unet_stays_in_the_delegate_and_passes_parity(small_unet, tmp_path):
    from pgn.export import export

    result = export(small_unet, "executorch", output_dir=tmp_path, size=(32, 64), graph_options="band_rows=8,decoder_conv=split")[0]
    assert result.status == "verified", result.reason
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["exporter"]["outside_delegate"] == {} and manifest["exporter"]["delegates"] == {"XnnpackBackend": 1}
    assert len(manifest["graph"]["applied"]["bands"]["level 0"]) == 4


@needs_executorch
def test_executorch_int8_banded_unet_loads_and_meets_the_cosine(small_unet, tmp_path):
    """Bands once shared one quantized weight between several convolutions, which XNNPACK refuses at load time (the
    small UNet fails this test just as the preset did when the per-band weight copies are taken out)."""
    from pgn.export import export

    result = export(small_unet, "executorch", output_dir=tmp_path, size=(32, 32), precision="int8", graph_options="band_rows=16")[0]
    assert result.status == "verified", result.reason
    assert "level 0" in json.loads(result.manifest_path.read_text())["graph"]["applied"]["bands"]


@pytest.mark.parametrize("kwargs, message", [({"int8_ops": "dense"}, "precision='int8'"),
                                             ({"int8_ops": "depthwise", "precision": "int8"}, "conv, dense, pointwise, all")])
def test_int8_ops_is_checked_before_export(unet, tmp_path, kwargs, message):
    from pgn.export import export

    with pytest.raises(PGNError, match=message):
        export(unet, "executorch", output_dir=tmp_path, size=(64, 64), **kwargs)
    assert not any(tmp_path.iterdir())


def test_each_target_fills_in_its_measured_defaults(tmp_path):
    from pgn.export.formats import FORMATS, options_for
    from pgn.export.options import ExportOptions

    def resolved(target, text=None):
        return options_for(FORMATS[target], ExportOptions(size=(64, 64), graph_options=text), tmp_path).graph_options

    assert resolved("onnx") == GraphOptions(decoder_conv="split")
    assert resolved("executorch") == GraphOptions(band_rows=32, decoder_conv="split", upsample_conv="transposed")
    assert resolved("tensorrt") == resolved("coreml") == GraphOptions.plain()
    # named options replace the target's, the others stay the target's
    assert resolved("executorch", "band_rows=16") == GraphOptions(band_rows=16, decoder_conv="split", upsample_conv="transposed")
    assert resolved("executorch", "plain") == GraphOptions.plain()
