"""benchmarks/gpu_check.sh: the plan, each step's fate (ok, failed, timed out, skipped), and a CPU smoke run with
the modules a bare GPU image lacks made unimportable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgn.benchmarks import gpu_check
from pgn.benchmarks.gpu_check import Step, gpu_slug, run_step

ROOT = Path(__file__).resolve().parents[2]
#: Modules a GPU image with only torch, torchvision, onnx, onnxruntime (CPU), click, rich, psutil, scikit-image and
#: matplotlib lacks.
ABSENT_ON_GPU_IMAGE = ("tqdm", "sklearn", "onnxscript", "coremltools", "tensorrt", "pytest", "tensorboard", "executorch", "torchao")
BLOCKER = '''
import os, sys
BLOCKED = set(filter(None, os.environ.get("PGN_TEST_BLOCK_MODULES", "").split(",")))
class _Hide:
    """Wraps a meta-path finder so that blocked modules are not found, exactly as if they were not installed."""
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.inner, attr)
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


def test_gpu_slug():
    assert gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_slug("NVIDIA GeForce RTX 4090 (24 GB)") == "nvidia-geforce-rtx-4090-24-gb"


def _step(code, **kw):
    return Step("demo", [sys.executable, "-c", code], **kw)


def test_step_outcomes(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_SECONDS", 1.0)
    ok = _step("print('3 passed, 1 skipped in 1.0s')", cap=60)
    run_step(ok, 100, tmp_path, tmp_path)
    assert ok.status == "ok" and ok.detail == "3 passed, 1 skipped in 1.0s"
    failed = _step("import sys; print('noise'); print('error: the real reason', file=sys.stderr); sys.exit(1)", cap=60)
    run_step(failed, 100, tmp_path, tmp_path)
    assert failed.status == "failed" and "exit 1: error: the real reason" in failed.detail
    slow = _step("import time; time.sleep(30)", cap=2)
    run_step(slow, 100, tmp_path, tmp_path)
    assert slow.status == "timed out" and slow.seconds < 20
    missing = _step("pass", cap=60, needs=("surely_not_a_module_here",))
    run_step(missing, 100, tmp_path, tmp_path)
    assert missing.status == "skipped" and "not installed" in missing.detail
    late = _step("pass", cap=60)
    run_step(late, 0.5, tmp_path, tmp_path)
    assert late.status == "skipped" and "time budget" in late.detail
    assert (tmp_path / "demo.log").read_text().startswith("$ ")


def test_dry_run_through_the_shell_script_plans_every_step(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--results-root", str(tmp_path)],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (folder,) = tmp_path.iterdir()
    steps = json.loads((folder / "plan.json").read_text())
    names = [s["name"] for s in steps]
    assert names[:5] == ["bench-batch1", "bench-batch8", "check-values", "distill-nccl", "gpu-tests"]
    assert [n for n in names if "compiled" in n][:3] == ["bench-batch1-compiled-vgg11", "bench-batch1-compiled-resnet4",
                                                         "bench-batch1-compiled-unet"]
    bench = steps[0]["command"]
    for part in ("--device cuda", "--size 224", "--batch 1", "--models vgg19,vgg11,resnet4,resnet6,resnet8,unet",
                 "torch,torch-fp16,torch-bf16,onnxruntime,tensorrt"):
        assert part in bench
    assert "--nproc_per_node 1" in steps[3]["command"] and "--steps 20" in steps[3]["command"]
    assert "-m gpu" in steps[4]["command"]


def test_only_takes_step_names_and_wildcards_and_refuses_one_that_names_nothing():
    from types import SimpleNamespace

    from pgn.benchmarks.gpu_check import select_steps

    steps = [SimpleNamespace(name=n) for n in ("bench-batch1", "bench-batch8", "distill-nccl", "bench-batch1-compiled-vgg11")]
    names = lambda only: [s.name for s in select_steps(steps, only)]  # noqa: E731
    assert names(None) == names("") == [s.name for s in steps]
    assert names("bench-batch1") == ["bench-batch1"]  # a name is not a prefix
    assert names("bench-batch1-compiled-*, distill*") == ["distill-nccl", "bench-batch1-compiled-vgg11"]
    with pytest.raises(ValueError, match="--only bench-batch names no step of the plan"):
        select_steps(steps, "bench-batch")


def test_without_a_gpu_it_says_so_and_measures_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--results-root", str(tmp_path)]) == 1
    assert "no CUDA GPU visible" in capsys.readouterr().err and not list(tmp_path.iterdir())


def _blocking_env(tmp_path, modules):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(site), PGN_TEST_BLOCK_MODULES=",".join(modules))


def test_a_python_without_torch_is_one_line_and_exit_1(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--results-root", str(tmp_path / "out")],
                          env=_blocking_env(tmp_path, ["torch"]), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().count("\n") == 0 and "cannot import torch, click and numpy (ModuleNotFoundError" in proc.stderr
    assert "set PYTHON=/path/to/python" in proc.stderr


def test_gpu_tests_collect_without_the_modules_a_gpu_image_lacks(tmp_path):
    """The gpu-tests step collects the whole suite: no test module may need an optional package to be imported."""
    env = _blocking_env(tmp_path, [m for m in ABSENT_ON_GPU_IMAGE if m != "pytest"])
    env["PYTHONPATH"] += os.pathsep + str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "-o", "addopts=-ra", str(ROOT / "tests")],  # as the gpu-tests step: a GPU image has no pytest-xdist
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "test_one_rank_nccl_distillation_trains_and_resumes" in proc.stdout


@pytest.mark.slow
def test_smoke_run_without_the_modules_a_gpu_image_lacks(tmp_path):
    """The plumbing end to end on the CPU: bench, distillation, summary; pytest absent means a skipped test step."""
    env = _blocking_env(tmp_path, ABSENT_ON_GPU_IMAGE)
    out = tmp_path / "results"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--only", "bench-batch1,distill*,gpu-tests",
                           "--results-root", str(out)], env=env, capture_output=True, text=True, timeout=600)
    folder = out / "cpu-smoke"
    summary = json.loads((folder / "summary.json").read_text())
    status = {s["name"]: s for s in summary["steps"]}
    assert status["bench-batch1"]["status"] == "ok", status["bench-batch1"]
    assert status["distill-gloo"]["status"] == "ok", status["distill-gloo"]
    assert status["gpu-tests"]["status"] == "skipped" and "pytest not installed" in status["gpu-tests"]["detail"]
    assert set(status) == {"bench-batch1", "distill-gloo", "gpu-tests"}  # --only takes names and wildcards, not prefixes
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(ABSENT_ON_GPU_IMAGE) - {"executorch", "torchao", "tensorboard"} <= set(summary["environment"]["missing"])
    rows = json.loads((folder / "batch1-32.json").read_text())["rows"]
    assert {(r["model"], r["runtime"], r["status"]) for r in rows} >= {("resnet4", "torch", "ok"), ("vgg11", "torch", "ok")}
    assert (folder / "batch1-32.md").is_file() and (folder / "batch1-32.png").is_file()
    assert summary["distill"]["backend"] == "gloo" and summary["distill"]["steps"] == 2
    assert (folder / "distill" / "metrics.jsonl").is_file() and not (folder / "distill" / "checkpoints").exists()
    text = (folder / "summary.md").read_text()
    assert "faster than VGG-11" in text and "pytest" in text
