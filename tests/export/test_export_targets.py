"""One dispatch: every FORMATS row implements ExportTarget, and a target added to the table needs nothing else.

The stand-in target below writes TorchScript (``torch.jit.trace`` of the export graph) and runs it with
``torch.jit.load``; registering it in ``FORMATS`` is enough for ``export.export``, ``export.load_runtime``,
``target="all"``, option checks and per-precision tolerances to handle it.
"""

import inspect
import json
from dataclasses import asdict, fields
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from pgn import export
from pgn.export.formats import FORMATS, check_options, options_for, precisions, resolve_targets, target_of
from pgn.export.graph import ExportGraph
from pgn.export.options import ExportOptions
from pgn.export.runtimes import Runtime
from pgn.export.target import ExportTarget
from pgn.export.verify import Tolerance
from pgn.errors import PGNError

from export_helpers import build

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # the stand-in's TorchScript is deprecated


class TorchScriptRuntime(Runtime):
    name = "torchscript"

    def __init__(self, artifact, manifest):
        super().__init__(artifact, manifest)
        self.module = torch.jit.load(str(artifact))
        self.info.update(runtime="torch.jit")

    def run_graph(self, y_hat, y):
        with torch.no_grad():
            outs = self.module(torch.from_numpy(y_hat), torch.from_numpy(y))
        return {n: o.numpy() for n, o in zip(self.output_names, outs)}


class TorchScriptTarget(ExportTarget):
    """A target that lives only in this test: fp32, and bf16 arithmetic with a residual output and its own tolerance."""

    name = "torchscript"
    suffix = ".ts"
    precisions = ("fp32", "bf16")
    packages = {"torch-jit": ("no-such-distribution", "torch")}
    runs_on = "anywhere PyTorch runs"
    verified_by = "torch.jit.load"

    def __init__(self, missing_here=None):
        self.missing_here = missing_here
        self.bf16_tolerance = Tolerance("bf16", max_rel_grad=None, max_rel_proxy=None, min_grad_cosine=0.99)

    def check_available(self):
        pass

    def output_names(self, options):
        return ("proxy", "residual") if options.precision == "bf16" else ("proxy", "grad")

    def export(self, model, path, options):
        dtype = torch.bfloat16 if options.precision == "bf16" else torch.float32
        graph = ExportGraph(model, outputs=self.output_names(options)[1], dtype=dtype, size=options.size)
        example = (torch.rand(options.shape), torch.rand(options.shape))
        with torch.no_grad():
            torch.jit.trace(graph.eval(), example, check_trace=False).save(str(path))

    def describe(self, artifact, options, model):
        return {"name": "torch.jit.trace", "bytes": Path(artifact).stat().st_size}

    def structural_checks(self, artifact, options, model):
        return {"passed": True, "loads": torch.jit.load(str(artifact)) is not None}

    def runtime_missing_here(self):
        return self.missing_here

    def tolerance(self, precision):
        return self.bf16_tolerance if precision == "bf16" else super().tolerance(precision)

    def load_runtime(self, artifact, manifest, settings):
        return TorchScriptRuntime(artifact, manifest)


@pytest.fixture
def torchscript(monkeypatch):
    """The stand-in target, registered in the table for one test."""
    target = TorchScriptTarget()
    monkeypatch.setitem(FORMATS, target.name, target)
    return target


# ------------------------------------------------------------------------------------------------------
# The table


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_row_implements_the_whole_interface(name):
    target = FORMATS[name]
    assert isinstance(target, ExportTarget) and target.name == name
    assert not inspect.isabstract(type(target))
    assert target.suffix.startswith(".") and target.runs_on and target.verified_by
    assert target.precisions and target.default_precision == target.precisions[0]
    known = {f.name for f in fields(ExportOptions)}
    assert set(target.all_options) <= known, "a target may only take options ExportOptions has"
    for precision in target.precisions:  # every precision it offers has parity thresholds
        assert target.tolerance(precision).precision == precision


def test_suffixes_tell_the_targets_apart():
    for target in FORMATS.values():
        assert target_of(Path("exports/model" + target.suffix)) is target


def test_a_precision_without_thresholds_is_refused():
    with pytest.raises(PGNError, match="no parity tolerance for precision 'int4'"):
        Tolerance.for_precision("int4")


def test_every_int8_target_passes_the_one_int8_gate_and_speaks_the_one_vocabulary():
    from pgn.export.int8 import INT8_OPS
    from pgn.export.verify import INT8_MIN_GRAD_COSINE

    int8_targets = [t for t in FORMATS.values() if "int8" in t.precisions]
    assert {t.name for t in int8_targets} >= {"onnx", "executorch"}
    for target in int8_targets:
        assert target.tolerance("int8") == Tolerance("int8", None, None, INT8_MIN_GRAD_COSINE) and INT8_MIN_GRAD_COSINE == 0.99
        assert "int8_ops" in target.options and target.int8_ops and set(target.int8_ops) <= set(INT8_OPS)
    assert {t.name: t.default_int8_ops for t in int8_targets} == {"onnx": "dense", "executorch": "conv"}


def test_tensorrt_timing_cache_defaults_to_the_output_folder(tmp_path):
    trt = FORMATS["tensorrt"]
    opts = options_for(trt, ExportOptions(), tmp_path)
    assert opts.timing_cache == tmp_path / "tensorrt-timing.cache" and opts.precision == "fp32"
    mine = tmp_path / "mine.cache"
    assert options_for(trt, ExportOptions(timing_cache=mine), tmp_path).timing_cache == mine
    assert options_for(FORMATS["onnx"], ExportOptions(), tmp_path).timing_cache is None


# ------------------------------------------------------------------------------------------------------
# A target added to the table


def test_a_new_target_exports_verifies_and_loads_through_the_table(torchscript, tmp_path):
    model = build("resnet4")
    (r,) = export.export(model, "torchscript", output_dir=tmp_path, size=SIZE)
    assert r.status == "verified", r.reason
    assert r.artifact == tmp_path / "resnet4-32x32-b1-fp32.ts"
    assert r.parity["runtime"] == "torchscript" and r.parity["structural_checks"]["loads"]
    assert r.parity["tolerance"] == asdict(Tolerance.for_precision("fp32"))
    manifest = json.loads(r.manifest_path.read_text())
    assert manifest["target"] == "torchscript" and manifest["exporter"]["name"] == "torch.jit.trace"
    assert manifest["target_info"] == {"runs_on": "anywhere PyTorch runs", "verified_by": "torch.jit.load"}
    assert manifest["versions"]["torch-jit"] == metadata.version("torch")  # the first distribution installed
    assert manifest["versions"]["onnxruntime"]  # every manifest records the packages of every target

    rt = export.load_runtime(r.artifact)  # the target comes from the suffix, then the manifest
    assert isinstance(rt, TorchScriptRuntime)
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.rand(1, 3, SIZE, SIZE, generator=g), torch.rand(1, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        ref = model(y_hat, y).numpy()
    np.testing.assert_allclose(rt.run(y_hat, y)["grad"], ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_a_new_precision_uses_the_targets_tolerance_and_recipe(torchscript, tmp_path):
    assert "bf16" in precisions()
    (r,) = export.export(build("resnet4"), "torchscript", output_dir=tmp_path, size=SIZE, precision="bf16")
    assert r.status == "verified", r.reason
    assert r.parity["tolerance"] == asdict(torchscript.bf16_tolerance)
    manifest = json.loads(r.manifest_path.read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["proxy", "residual"]
    assert len(manifest["gradient"]["host_scale_at_export_size"]) == 3
    with pytest.raises(PGNError, match="precision 'bf16' is not available for onnx: use one of fp32, fp16"):
        export.export(build("resnet4"), "onnx", output_dir=tmp_path / "onnx", size=SIZE, precision="bf16")


def test_a_tolerance_the_artifact_misses_fails_the_export(torchscript, tmp_path):
    torchscript.bf16_tolerance = Tolerance("bf16", max_rel_grad=0.0, max_rel_proxy=None, min_grad_cosine=None)
    (r,) = export.export(build("resnet4"), "torchscript", output_dir=tmp_path, size=SIZE, precision="bf16")
    assert r.status == "failed" and r.reason.startswith("parity failed: random: grad rel error")
    assert list(tmp_path.iterdir()) == []


def test_the_heap_from_before_is_set_aside_while_a_target_exports_and_verifies(torchscript, tmp_path, monkeypatch, unfrozen_heap):
    import gc

    frozen = []
    export_graph, verify = TorchScriptTarget.export, TorchScriptTarget.structural_checks
    monkeypatch.setattr(TorchScriptTarget, "export", lambda *a: (frozen.append(gc.get_freeze_count()), export_graph(*a))[1])
    monkeypatch.setattr(TorchScriptTarget, "structural_checks", lambda *a: (frozen.append(gc.get_freeze_count()), verify(*a))[1])
    (r,) = export.export(build("resnet4"), "torchscript", output_dir=tmp_path, size=SIZE)
    assert r.status == "verified" and len(frozen) == 2 and min(frozen) > 0
    assert gc.get_freeze_count() == 0  # put back


def test_a_runtime_missing_here_gives_converted_not_run(torchscript, tmp_path):
    torchscript.missing_here = "not executed: this stand-in runs elsewhere"
    (r,) = export.export(build("resnet4"), "torchscript", output_dir=tmp_path, size=SIZE)
    assert r.status == "converted-not-run" and r.reason == "not executed: this stand-in runs elsewhere"
    manifest = json.loads(r.manifest_path.read_text())
    assert manifest["parity"]["executed"] is False and manifest["parity"]["structural_checks"]["passed"]


def test_all_and_the_option_checks_include_a_new_target(torchscript, tmp_path):
    assert [t.name for t in resolve_targets("all")] == ["onnx", "tensorrt", "coreml", "executorch", "executorch-coreml", "torchscript"]
    assert "Valid targets: onnx, tensorrt, coreml, executorch, executorch-coreml, torchscript, all" in _error(lambda: resolve_targets("torchscrip"))
    msg = _error(lambda: check_options(torchscript, {"opset": 17}))
    assert msg == ("option opset=17 is not supported by target 'torchscript'; it applies to onnx, tensorrt. "
                   "torchscript accepts: size, batch, dynamic, precision, graph_options")


def _error(call) -> str:
    with pytest.raises(PGNError) as e:
        call()
    return str(e.value)


# ------------------------------------------------------------------------------------------------------
# What every target gets from the table: integrity checks, one export per folder, no stale temporaries


def test_a_new_targets_artifact_is_checked_against_its_manifest(torchscript, tmp_path):
    (r,) = export.export(build("resnet4"), "torchscript", output_dir=tmp_path, size=SIZE)
    r.artifact.write_bytes(r.artifact.read_bytes() + b"\0")  # the stand-in runtime checks nothing itself
    with pytest.raises(PGNError, match="does not match its manifest"):
        export.load_runtime(r.artifact)


def test_a_killed_exports_temporary_folder_is_removed_by_the_next(torchscript, tmp_path):
    stale = tmp_path / ".pgn-export-k1ll3d"  # what kill -9 during conversion leaves
    (stale / "half").mkdir(parents=True)
    mine = tmp_path / ".other-tool-tmp"
    mine.mkdir()
    (r,) = export.export(build("resnet4"), "torchscript", output_dir=tmp_path, size=SIZE, verify=False)
    assert r.ok and not stale.exists() and mine.is_dir()  # only our own kind of temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other-tool-tmp", r.artifact.name, r.manifest_path.name])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="flock is POSIX")
def test_an_output_folder_another_export_holds_is_refused_and_untouched(torchscript, tmp_path):
    from folder_holder import FolderHolder

    stale = tmp_path / ".pgn-export-live"  # the other export's working folder: must survive
    stale.mkdir()
    holder = FolderHolder(tmp_path, "export", "output folder")
    try:
        with pytest.raises(PGNError, match=f"output folder .* is in use by another export \\(PID {holder.pid}\\)"):
            export.export(build("resnet4"), "torchscript", output_dir=tmp_path, size=SIZE)
        assert stale.is_dir() and not list(tmp_path.glob("*.ts"))
    finally:
        holder.kill()
