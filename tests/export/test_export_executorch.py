"""ExecuTorch (.pte, XNNPACK delegate): export, parity in ExecuTorch's own runtime, int8, dynamic shapes,
manifests, the runtime's input contract and thread pool, and the one-line errors.

Kept small for CI: 32×32 (UNet) and 64×64 (ResNet) inputs, one export per kind, shared by the tests through module-scoped fixtures.
"""

import gc
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pgn import export
import pgn
from pgn.export.cli import main
from pgn.export.executorch import INT8_MIN_GRAD_COSINE, THREAD_POOL, import_executorch
from pgn.export.verify import CALIBRATION_PHOTOS, PARITY_PHOTOS, calibration_pairs, real_images
from pgn.errors import PGNError

from export_helpers import build, needs

needs_executorch = needs("executorch")


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def _eager(model, y_hat, y):
    with torch.no_grad():
        out = model.outputs(y_hat, y)
    return out.proxy.numpy(), out.grad.numpy()


@pytest.fixture(scope="module")
def unet_cli(tmp_path_factory):
    """The UNet at 32×32 (its smallest size), fp32, written by pgn-export (the CLI path) from a checkpoint, with its JSON report."""
    out = tmp_path_factory.mktemp("et-cli")
    ckpt = pgn.save(build("unet"), out / "unet.pt")
    res = CliRunner().invoke(main, ["--checkpoint", str(ckpt), "--target", "executorch", "--size", "32", "32",
                                    "--output", str(out / "exports"), "--json", str(out / "report.json")],
                             catch_exceptions=False)
    return res, out, out / "exports" / "unet-32x32-b1-fp32.pte"


@pytest.fixture(scope="module")
def resnet4_dynamic(tmp_path_factory):
    """ResNet-4 with dynamic batch (1-2) and height/width (64-128)."""
    out = tmp_path_factory.mktemp("et-dyn")
    return export.export(build("resnet4"), "executorch", output_dir=out, size=64, dynamic=True, max_size=(128, 128),
                         max_batch=2)[0]


@pytest.fixture(scope="module")
def resnet4_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("et-int8")
    return export.export(build("resnet4"), "executorch", output_dir=out, size=64, precision="int8")[0]


# ------------------------------------------------------------------------------------------------------
# Export and parity


@needs_executorch
def test_cli_writes_a_verified_pte_with_its_manifest(unet_cli):
    res, out, pte = unet_cli
    assert res.exit_code == 0, res.output
    assert "verified" in res.output and "RANDOM WEIGHTS" not in res.output
    (r,) = json.loads((out / "report.json").read_text())["results"]
    assert r["target"] == "executorch" and r["status"] == "verified" and r["artifact"] == str(pte)
    assert sorted(p.name for p in pte.parent.iterdir()) == [pte.name, pte.name + ".manifest.json"]


@needs_executorch
def test_manifest_records_delegate_operators_parity_and_versions(unet_cli):
    _, _, pte = unet_cli
    m = json.loads(export.manifest_path(pte).read_text())
    assert m["target"] == "executorch" and m["status"] == "verified" and m["precision"] == "fp32"
    assert m["model"]["weights"].startswith("checkpoint unet.pt (sha256 ")
    assert m["sha256"] == hashlib.sha256(pte.read_bytes()).hexdigest()
    assert [i["name"] for i in m["inputs"]] == ["y_hat", "y"] and [o["name"] for o in m["outputs"]] == ["proxy", "grad"]
    ex = m["exporter"]
    assert ex["method"] == "forward" and ex["executorch"] == m["versions"]["executorch"]
    # at fixed shapes the whole UNet, head included, is one XNNPACK subgraph
    assert ex["delegates"] == {"XnnpackBackend": 1} and ex["operators_outside_delegate"] == 0 and ex["outside_delegate"] == {}
    assert ex["planned_memory_mb"] > 0
    assert m["target_info"]["delegate"] == "XnnpackBackend" and m["target_info"]["quantization"] is None
    parity = m["parity"]
    assert parity["passed"] and parity["runtime"] == "executorch-xnnpack" and set(parity["sets"]) == {"random", "real"}
    assert parity["tolerance"]["max_rel_grad"] == 1e-4  # the ONNX fp32 tolerance
    for metrics in parity["sets"].values():
        assert metrics["grad_max_rel"] < 1e-5 and metrics["proxy_max_rel"] < 1e-5


@needs_executorch
def test_resnet_dynamic_shapes_run_at_other_sizes(resnet4_dynamic):
    r = resnet4_dynamic
    assert r.status == "verified", r.reason
    m = json.loads(r.manifest_path.read_text())
    assert m["shape_range"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [2, 3, 128, 128]}
    assert "random-96x96" in r.parity["sets"]
    # outside the delegate: only the gradient scale's H·W, which a dynamic graph computes from the input shape
    # (the nearest upsampling, which XNNPACK has no kernel for, is a transposed conv in the target's default graph)
    assert m["graph"]["applied"]["upsample_conv"].startswith("transposed")
    assert m["exporter"]["outside_delegate"] == {"aten::full_like.out": 1, "aten::slice_copy.Tensor_out": 2,
                                                 "aten::sum.IntList_out": 1}
    assert m["exporter"]["operators_outside_delegate"] == 4
    model, rt = build("resnet4"), export.load_runtime(r.artifact)
    for shape in ((1, 3, 64, 128), (2, 3, 128, 96)):  # non-square, and the largest batch
        y_hat, y = _pair(shape)
        out = rt.run(y_hat, y)
        proxy, grad = _eager(model, y_hat, y)
        assert out["grad"].shape == shape
        np.testing.assert_allclose(out["grad"], grad, rtol=0, atol=1e-5 * np.abs(grad).max())
        np.testing.assert_allclose(out["proxy"], proxy, rtol=0, atol=1e-5 * np.abs(proxy).max())
    with pytest.raises(PGNError, match=r"outside the artifact's range \(1, 3, 64, 64\)..\(2, 3, 128, 128\)"):
        rt.run(*_pair((1, 3, 130, 64)))
    with pytest.raises(PGNError, match="multiples of 2"):
        rt.run(*_pair((1, 3, 64, 81)))


@needs_executorch
def test_dynamic_defaults_are_bounded_tighter_than_the_shared_ones():
    target = export.FORMATS["executorch"]
    opts = target.with_defaults(export.ExportOptions(size=(64, 64), dynamic=True, precision="fp32"), None)
    assert (opts.max_size, opts.max_batch) == ((512, 512), 2)
    opts = target.with_defaults(export.ExportOptions(size=(768, 64), dynamic=True, max_batch=4, precision="fp32"), None)
    assert (opts.max_size, opts.max_batch) == ((768, 512), 4)


@needs_executorch
def test_int8_meets_the_cosine_and_records_its_recipe(resnet4_int8):
    r = resnet4_int8
    assert r.status == "verified", r.reason
    assert r.artifact.name == "resnet4-64x64-b1-int8.pte"
    m = json.loads(r.manifest_path.read_text())
    assert m["parity"]["tolerance"] == {"precision": "int8", "max_rel_grad": None, "max_rel_proxy": None,
                                        "min_grad_cosine": INT8_MIN_GRAD_COSINE}
    for metrics in m["parity"]["sets"].values():
        assert metrics["grad_cosine_min"] >= INT8_MIN_GRAD_COSINE
        assert metrics["grad_max_rel"] > 1e-4  # really quantized: far from fp32 agreement
    recipe = m["target_info"]["quantization"]
    assert recipe["quantized_ops"] == "conv2d only" and recipe["min_grad_cosine"] == INT8_MIN_GRAD_COSINE
    assert set(recipe["calibration_photos"]).isdisjoint(recipe["parity_photos"])
    assert [o["name"] for o in m["outputs"]] == ["proxy", "grad"]  # float32 outputs, no host scale
    fp32_mb = 5.3  # resnet4's fp32 weights; int8 stores a quarter of that
    assert r.size_mb < fp32_mb / 2


def test_calibration_photos_are_disjoint_from_the_parity_photos():
    assert set(CALIBRATION_PHOTOS).isdisjoint(PARITY_PHOTOS)
    y_hat, y = calibration_pairs((32, 48), 4)
    assert y.shape == y_hat.shape == (4, 3, 32, 48) and not torch.equal(y, y_hat)
    parity = real_images((32, 48), len(PARITY_PHOTOS))
    for calib in y:  # no calibration image is a parity image
        assert all((calib - p).abs().max() > 0.05 for p in parity)


# ------------------------------------------------------------------------------------------------------
# The runtime


@needs_executorch
def test_load_runtime_runs_a_pte_like_pytorch(unet_cli):
    _, _, pte = unet_cli
    rt = export.load_runtime(pte)
    assert rt.name == "executorch-xnnpack" and rt.info["delegate"] == "XnnpackBackend" and rt.info["threads"] >= 1
    y_hat, y = _pair((1, 3, 32, 32), seed=3)
    proxy, grad = _eager(build("unet"), y_hat, y)
    for inputs in ((y_hat, y), (y_hat.numpy(), y.numpy()), (y_hat.double(), y.double())):
        out = rt.run(*inputs)
        assert out["grad"].dtype == np.float32
        np.testing.assert_allclose(out["grad"], grad, rtol=0, atol=1e-5 * np.abs(grad).max())
        np.testing.assert_allclose(out["proxy"], proxy, rtol=0, atol=1e-5 * np.abs(proxy).max())
    step = rt.prepare(y_hat, y)
    np.testing.assert_allclose(step()[1].numpy(), grad, rtol=0, atol=1e-5 * np.abs(grad).max())


@needs_executorch
@pytest.mark.parametrize("bad, message", [
    (lambda x: (x * 255).to(torch.uint8), "must be a floating-point image .*got uint8"),
    (lambda x: x.masked_fill(x > 0.5, float("nan")), "NaN"),
    (lambda x: x[:, :, :16], r"takes inputs of shape \(1, 3, 32, 32\)"),
    (lambda x: x > 0.5, "must be a floating-point image .*got bool"),
    (lambda x: x.tolist(), "numpy array or a torch.Tensor, got list"),
    (lambda x: (x.numpy() * 255).astype("uint8"), "floating-point .*uint8"),
    (lambda x: torch.empty_like(x, device="meta"), "meta tensor"),
    (lambda x: x.to_sparse(), "sparse_coo tensor: images must be dense"),
])
def test_runtime_applies_the_input_contract(unet_cli, bad, message):
    _, _, pte = unet_cli
    rt = export.load_runtime(pte)
    y_hat, y = _pair((1, 3, 32, 32))
    with pytest.raises(PGNError, match=message) as e:
        rt.run(bad(y_hat), bad(y))
    assert "\n" not in str(e.value)


@needs_executorch
def test_threads_are_set_before_loading_and_never_under_a_loaded_program(unet_cli):
    _, _, pte = unet_cli
    gc.collect()
    original = THREAD_POOL.size(import_executorch(compiler=False).portable_lib)
    other = 1 if original != 1 else 2
    try:
        rt = export.load_runtime(pte, threads=other)
        assert rt.info["threads"] == other == THREAD_POOL.size(import_executorch(compiler=False).portable_lib)
        rt.run(*_pair((1, 3, 32, 32)))
        with pytest.raises(PGNError, match=f"has {other} threads and another loaded .pte uses it: pass threads={other}"):
            export.load_runtime(pte, threads=original)
        assert export.load_runtime(pte, threads=other).info["threads"] == other  # the same size is fine
        del rt
        gc.collect()
    finally:
        back = export.load_runtime(pte, threads=original)
    assert back.info["threads"] == original


@needs_executorch
def test_settings_of_other_runtimes_are_refused(unet_cli):
    _, _, pte = unet_cli
    with pytest.raises(PGNError, match="on the CPU here"):
        export.load_runtime(pte, device="cuda")
    with pytest.raises(PGNError, match="takes only threads= .*not inter_op_threads"):
        export.load_runtime(pte, inter_op_threads=2)


# ------------------------------------------------------------------------------------------------------
# Bad input: one line each, nothing left behind


@needs_executorch
@pytest.mark.parametrize("break_it, message", [
    (lambda pte: export.manifest_path(pte).unlink(), "no manifest beside"),
    (lambda pte: pte.write_bytes(pte.read_bytes()[:-1] + b"\0"), "does not match its manifest"),
    (lambda pte: _edit_manifest(pte, target="onnx"), "is a onnx artifact according to its manifest, not executorch"),
    (lambda pte: _edit_manifest(pte, sha256="0" * 64), "does not match its manifest"),
    (lambda pte: export.manifest_path(pte).write_text("[]"), "holds an array, not a JSON object"),
    (lambda pte: _claim_size(pte, 128), r"takes inputs of shape \[1, 3, 32, 32\] but its manifest claims \[1, 3, 128, 128\]"),
])
def test_a_pte_whose_manifest_does_not_match_is_refused(unet_cli, tmp_path, break_it, message):
    _, _, original = unet_cli
    pte = tmp_path / original.name
    shutil.copy(original, pte)
    shutil.copy(export.manifest_path(original), export.manifest_path(pte))
    break_it(pte)
    with pytest.raises(PGNError, match=message) as e:
        export.load_runtime(pte)
    assert "\n" not in str(e.value)


def _claim_size(pte, size):
    path = export.manifest_path(pte)
    manifest = json.loads(path.read_text())
    for entry in manifest["inputs"] + manifest["outputs"]:
        entry["shape"] = [1, 3, size, size]
    path.write_text(json.dumps(dict(manifest, export_size=[size, size])))


def _edit_manifest(pte, **changes):
    path = export.manifest_path(pte)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))


@needs_executorch
def test_an_artifact_that_fails_parity_leaves_nothing(resnet4_int8, tmp_path, monkeypatch):
    target = export.FORMATS["executorch"]
    # the int8 program of the same weights stands in for an fp32 conversion that went wrong
    monkeypatch.setattr(type(target), "export", lambda self, model, path, options: shutil.copy(resnet4_int8.artifact, path))
    (r,) = export.export(build("resnet4"), "executorch", output_dir=tmp_path, size=64)
    assert r.status == "failed" and r.reason.startswith("parity failed: random: grad rel error")
    assert r.artifact is None and r.parity["passed"] is False and list(tmp_path.iterdir()) == []


class _ErfinvBackbone(torch.nn.Module):
    """A small backbone ending in an operator ExecuTorch cannot lower (erfinv is not in the Core ATen opset)."""

    size_multiple = 2

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return torch.special.erfinv(0.5 * torch.tanh(self.conv(x)))


@needs_executorch
def test_an_operator_that_cannot_lower_is_named(tmp_path):
    model = build("resnet4")
    model.backbone = _ErfinvBackbone()
    (r,) = export.export(model, "executorch", output_dir=tmp_path, size=64)
    assert r.status == "failed" and "\n" not in r.reason
    assert r.reason.startswith("operator aten.erfinv.default cannot be lowered to ExecuTorch")
    assert list(tmp_path.iterdir()) == []


def test_missing_executorch_names_the_extra(no_executorch, tmp_path):
    with pytest.raises(export.RuntimeUnavailable) as e:
        export.export(build("resnet4"), "executorch", output_dir=tmp_path / "out", size=64)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ExecuTorch is not installed")
    assert 'pip install "pgn-toolkit[executorch]"' in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_without_executorch_is_one_line_and_exit_1(no_executorch, tmp_path):
    res = CliRunner().invoke(main, ["--backbone", "resnet4", "--target", "executorch", "--size", "64", "64",
                                    "--output", str(tmp_path)])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: ExecuTorch is not installed")
    assert 'pip install "pgn-toolkit[executorch]"' in errors[0] and "Traceback" not in res.output
    assert not list(tmp_path.glob("*.pte"))


def test_int8_is_refused_by_a_target_without_an_int8_recipe(tmp_path):
    with pytest.raises(PGNError, match="precision 'int8' is not available for coreml: use one of fp16, fp32"):
        export.export(build("resnet4"), "coreml", output_dir=tmp_path, size=64, precision="int8")
