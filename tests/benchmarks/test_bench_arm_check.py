"""The aarch64 check's command (:mod:`benchmarks.arm_check`) and its C++ runner build (:mod:`benchmarks.arm_cxx`)."""

import shutil
import subprocess

import pytest

from pgn.benchmarks import arm_check, arm_cxx


def test_defaults_cover_every_kind_on_three_cpu_models():
    args = arm_check.parse_args([])
    assert set(args.kinds) == set(arm_check.KINDS)
    assert args.cpus == ("cortex-a53", "cortex-a76", "max")  # no dot-product, dot-product, SVE/SME
    assert args.size == 64 and args.backbones == ("resnet4", "unet")


@pytest.mark.parametrize("argv, message", [(["--kinds", "tflite"], "unknown kind 'tflite'"),
                                           (["--size", "48"], "multiple of 32")])
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        arm_check.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_setup_failure_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PGN_ARM_CACHE", str(tmp_path / "cache"))
    from pgn.export import arm_env

    monkeypatch.setattr(arm_env.shutil, "which", lambda name: None)
    assert arm_check.main(["--setup-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the aarch64 environment needs 'apt-get'")


def test_the_runner_build_names_a_missing_piece_of_the_package(tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("no g++ here")
    package = tmp_path / "executorch"
    (package / "include" / "executorch").mkdir(parents=True)
    problem = arm_cxx.build("x86", package, tmp_path / "runner")
    assert problem and "lacks" in problem and "module.h" in problem


@pytest.mark.slow
def test_the_runner_builds_against_the_installed_package(tmp_path):
    pytest.importorskip("executorch")
    if shutil.which("g++") is None:
        pytest.skip("no g++ here")
    out = tmp_path / "runner"
    assert arm_cxx.build("x86", arm_cxx.host_executorch_dir(), out) is None
    usage = subprocess.run([str(out)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
