"""The aarch64 check (:mod:`export.arm_env`, :mod:`export.arm_guest`, :mod:`export.arm_verify`).

The environment builder's failure paths run with a fake command runner (no network, no QEMU). The comparison and
crash handling run the guest script on this host (a "guest" that is the host's own Python). The ``arm``-marked
test runs real artifacts under ``qemu-aarch64`` where the cached environment exists and is skipped, saying why,
where it does not.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pgn.export import arm_env
from pgn.export.arm_env import ArmEnvError, ArmEnvironment, STEPS, decode_hwcaps, fake_cpuinfo, qemu_version, stub_sources
from pgn.export.arm_verify import ArmCase, ArmRow, check_on_arm, markdown_table, run_guest, summary
from pgn.export.verify import InputSet, Tolerance


class FakeRunner:
    """Records commands; fails those whose text contains a key of ``fail`` with that output."""

    def __init__(self, fail=None):
        self.fail = fail or {}
        self.calls = []

    def __call__(self, cmd, kwargs):
        text = " ".join(map(str, cmd))
        self.calls.append(text)
        for key, output in self.fail.items():
            if key in text:
                return subprocess.CompletedProcess(cmd, 100, "", output)
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def tools(monkeypatch, tmp_path):
    """apt-get, dpkg-deb and readelf "on PATH" and a keyring that exists, whatever this machine has."""
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    monkeypatch.setattr(arm_env, "KEYRING", keyring)
    monkeypatch.setattr(arm_env.shutil, "which", lambda name: f"/usr/bin/{name}")


def _env(tmp_path, runner):
    return ArmEnvironment(root=tmp_path / "cache", runner=runner)


def _one_line(e: Exception) -> str:
    text = str(e)
    assert "\n" not in text and text
    return text


# --------------------------------------------------------------------------------------------------------
# The builder's failure paths


def test_cache_dir_follows_pgn_arm_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("PGN_ARM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert arm_env.cache_dir() == tmp_path / "xdg" / "pgn-toolkit" / "arm"
    monkeypatch.setenv("PGN_ARM_CACHE", str(tmp_path / "mine"))
    assert arm_env.cache_dir() == tmp_path / "mine"


def test_a_failed_download_refuses_in_one_line_naming_the_step_and_what(tools, tmp_path):
    runner = FakeRunner({"update": "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Could not resolve 'deb.debian.org'"})
    env = _env(tmp_path, runner)
    with pytest.raises(ArmEnvError) as e:
        env.ensure(["apt"])
    text = _one_line(e.value)
    assert text.startswith("apt: apt-get update") and "Could not resolve" in text and "log:" in text
    assert not env.cached("apt")  # no stamp: the next run tries again


def test_a_package_apt_cannot_find_is_named(tools, tmp_path):
    runner = FakeRunner({"download": "E: Unable to locate package python3.11-minimal:arm64"})
    env = _env(tmp_path, runner)
    env.ensure(["apt"])
    with pytest.raises(ArmEnvError, match="sysroot: apt-get download .* Unable to locate package python3.11-minimal"):
        env.ensure(["sysroot"])


def test_a_download_that_returns_nothing_is_refused(tools, tmp_path):
    env = _env(tmp_path, FakeRunner())  # apt-get "succeeds" but writes no .deb
    env.ensure(["apt"])
    with pytest.raises(ArmEnvError, match="did not fetch qemu-user"):
        env.ensure(["qemu"])


def test_a_failed_wheel_download_names_the_pins(tools, tmp_path):
    runner = FakeRunner({"pip install": "ERROR: No matching distribution found for torch==2.14.1"})
    with pytest.raises(ArmEnvError) as e:
        _env(tmp_path, runner).ensure(["wheels"])
    assert "wheels: pip install of the manylinux_2_28_aarch64 wheels" in _one_line(e.value)
    assert "No matching distribution found for torch==2.14.1" in str(e.value)


def test_a_missing_host_tool_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(arm_env.shutil, "which", lambda name: None)
    with pytest.raises(ArmEnvError) as e:
        _env(tmp_path, FakeRunner()).ensure(["apt"])
    assert "'apt-get'" in _one_line(e.value) and "Debian or Ubuntu" in str(e.value)


def test_a_missing_keyring_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(arm_env.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(arm_env, "KEYRING", tmp_path / "absent.gpg")
    with pytest.raises(ArmEnvError, match="debian-archive-keyring"):
        _env(tmp_path, FakeRunner()).ensure(["apt"])


def test_a_command_that_is_not_installed_is_named(tools, tmp_path):
    def runner(cmd, kwargs):
        raise FileNotFoundError(cmd[0])

    with pytest.raises(ArmEnvError, match="'apt-get' is not installed"):
        _env(tmp_path, runner).ensure(["apt"])


def test_an_uncreatable_cache_folder_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArmEnvError, match="PGN_ARM_CACHE"):
        ArmEnvironment(root=blocker / "arm", runner=FakeRunner()).ensure(["apt"])


def test_a_complete_step_is_reused_and_a_corrupt_one_rebuilt(tools, tmp_path):
    runner = FakeRunner()
    env = _env(tmp_path, runner)
    env.ensure(["apt"])
    assert env.cached("apt")
    calls = len(runner.calls)
    env.ensure(["apt"])
    assert len(runner.calls) == calls  # cached: nothing runs
    # a key file gone (half-deleted cache) → built again
    (env.root / "apt" / "apt.conf").unlink()
    assert not env.cached("apt")
    env.ensure(["apt"])
    assert len(runner.calls) == calls + 1 and env.cached("apt")
    # an unreadable stamp, or one from other pins → built again
    env.stamp_path("apt").write_text("{not json")
    assert not env.cached("apt")
    env.ensure(["apt"])
    stamp = json.loads(env.stamp_path("apt").read_text())
    stamp["pins"]["guest_suite"] = "buster"
    env.stamp_path("apt").write_text(json.dumps(stamp))
    assert not env.cached("apt")


def test_apt_runs_with_a_private_configuration(tools, tmp_path):
    runner = FakeRunner()
    env = _env(tmp_path, runner)
    env.ensure(["apt"])
    conf = (env.root / "apt" / "apt.conf").read_text()
    assert f'Dir::State::Lists "{env.root}/apt/lists"' in conf and '"arm64"' in conf
    sources = (env.root / "apt" / "sources.list").read_text()
    assert "bookworm main" in sources and "trixie main" in sources
    assert env.apt_env()["APT_CONFIG"] == str(env.root / "apt" / "apt.conf")


def test_ready_names_the_missing_steps(tmp_path):
    env = _env(tmp_path, FakeRunner())
    text = env.ready()
    assert all(step in text for step in STEPS) and "arm_check.sh --setup-only" in text


def test_an_old_qemu_is_refused(tools, tmp_path, monkeypatch):
    env = _env(tmp_path, FakeRunner())

    def fake_download(step, packages, dest):
        dest.mkdir(parents=True, exist_ok=True)
        deb = dest / "qemu-user_1%3a7.2+dfsg-7_amd64.deb"
        deb.write_bytes(b"")
        return [deb]

    def fake_unpack(step, debs, dest):
        (dest / "usr" / "bin").mkdir(parents=True)
        (dest / "usr" / "bin" / "qemu-aarch64").write_text("")

    monkeypatch.setattr(env, "apt_download", fake_download)
    monkeypatch.setattr(env, "unpack", fake_unpack)
    env.runner = lambda cmd, kw: subprocess.CompletedProcess(cmd, 0, "qemu-aarch64 version 7.2.0 (Debian 1:7.2+dfsg-7)\n", "")
    with pytest.raises(ArmEnvError, match="version 7.2.0, the check needs at least 10.0"):
        env.ensure(["qemu"])


def test_helpers():
    assert qemu_version("qemu-aarch64 version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)") == (10, 0, 13)
    assert qemu_version("nonsense") is None
    assert decode_hwcaps(0x119FFB, 0) == "fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp".split()
    assert "sme" in decode_hwcaps(0, 1 << 23) and "i8mm" in decode_hwcaps(0, 1 << 13)
    info = fake_cpuinfo(0x414FD0B1, ["fp", "asimd", "asimddp"])
    assert "CPU part\t: 0xd0b" in info and "Features\t: fp asimd asimddp" in info and "CPU implementer\t: 0x41" in info


def test_stand_in_sources_keep_version_nodes_and_never_mix_them_with_anonymous_ones():
    asm, script = stub_sources("libcudart.so.13", {"libcudart.so.13": ["cudaGetDeviceCount", "cudaFree"]})
    assert "libcudart.so.13 {" in script and "cudaFree;" in script and "mov w0, #35" in asm
    asm, script = stub_sources("libnccl.so.2", {"": ["ncclCommInitRank", "ncclUniqueIdVar:object"]})
    assert script.startswith("{") and "local: *;" in script and ".type ncclUniqueIdVar, %object" in asm


def test_cpu_root_describes_one_core_of_the_model(tools, tmp_path):
    env = _env(tmp_path, FakeRunner())
    env.sysroot.mkdir(parents=True)
    (env.sysroot / "usr").mkdir()
    root = env.cpu_root("cortex-a76", ["fp", "asimd", "asimddp"])
    assert (root / "usr").resolve() == (env.sysroot / "usr").resolve()
    assert "asimddp" in (root / "proc" / "cpuinfo").read_text()
    cpu = root / "sys" / "devices" / "system" / "cpu"
    assert (cpu / "present").read_text() == "0\n"
    assert (cpu / "cpu0" / "regs" / "identification" / "midr_el1").read_text().strip() == "0x00000000414fd0b1"
    cmd = env.guest_command("cortex-a76", ["x.py"])
    assert cmd[:5] == [str(env.qemu), "-cpu", "cortex-a76", "-L", str(root)] and cmd[-1] == "x.py"


# --------------------------------------------------------------------------------------------------------
# Running and comparing, with the host standing in for the guest


class HostGuest(ArmEnvironment):
    """An environment whose "guest" is this host's Python: the guest script runs natively."""

    def __init__(self, root, wrapper=None):
        super().__init__(root=root)
        self.wrapper = wrapper

    def ready(self):
        return None

    def guest_command(self, cpu, args, hwcaps=()):
        if self.wrapper is not None:
            return [sys.executable, str(self.wrapper), *args]
        return [sys.executable, *args]

    def guest_env(self):
        import os

        return dict(os.environ)


def _fake_features(env, cpus):
    (env.root / "cpus").mkdir(parents=True, exist_ok=True)
    for cpu in cpus:
        (env.root / "cpus" / f"{cpu}.features.json").write_text(json.dumps(["fp", "asimd"]))


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    """A ResNet-4 ONNX fp32 artifact at 32², batch 1, and its model."""
    pytest.importorskip("onnxruntime")
    from export_helpers import build

    from pgn import export
    model = build("resnet4")
    out = tmp_path_factory.mktemp("arm-onnx")
    [r] = export.export(model, "onnx", output_dir=out, size=(32, 32))
    assert r.ok, r.reason
    return r.artifact, model


def test_check_on_arm_passes_an_artifact_that_agrees_and_fails_one_that_does_not(onnx_artifact, tmp_path):
    from pgn.export.arm_verify import pgn_case

    artifact, model = onnx_artifact
    env = HostGuest(tmp_path / "cache")
    _fake_features(env, ["host"])
    good = pgn_case(artifact, model=model)
    bad = pgn_case(artifact, model=model)
    bad.id, honest = "perturbed", bad.x86
    bad.x86 = lambda arrays: {k: v * 1.001 for k, v in honest(arrays).items()}  # x86 "disagrees" by 1e-3
    rows, facts = check_on_arm([good, bad], ["host"], env=env, workdir=tmp_path / "work")
    by_case = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    assert [r.set for r in by_case[good.id]] == ["random", "real"]
    assert all(r.status == "pass" for r in by_case[good.id])
    assert by_case[good.id][0].vs_x86["grad_max_rel"] == 0.0  # the same runtime on the same inputs
    assert by_case[good.id][0].vs_pytorch["grad_max_rel"] < 1e-4
    assert all(r.status == "FAIL" and any("vs x86" in f for f in r.failures) for r in by_case["perturbed"])
    assert facts["host"]["guest"]["machine"]
    table = markdown_table(rows)
    assert "**FAIL**" in table and "| pass |" in table
    assert not summary(rows)["all_passed"]


def test_a_guest_that_crashes_is_reported_and_the_other_cases_still_run(onnx_artifact, tmp_path):
    from pgn.export.arm_verify import pgn_case

    artifact, model = onnx_artifact
    wrapper = tmp_path / "crashing_guest.py"
    guest = Path(__file__).resolve().parents[2] / "export" / "arm_guest.py"
    wrapper.write_text(textwrap.dedent(f"""
        import json, os, runpy, sys
        job = json.load(open(sys.argv[2]))
        first = job["cases"][0]
        if first["id"] == "boom":
            with open(os.path.join(job["out"], "progress.jsonl"), "a") as f:
                f.write(json.dumps({{"id": "boom", "started": 0}}) + "\\n")
            os.abort()
        sys.argv = sys.argv[1:]
        runpy.run_path({str(guest)!r}, run_name="__main__")
    """))
    env = HostGuest(tmp_path / "cache", wrapper=wrapper)
    _fake_features(env, ["host"])
    boom, fine = pgn_case(artifact, model=model), pgn_case(artifact, model=model)
    boom.id = "boom"
    rows, _ = check_on_arm([boom, fine], ["host"], env=env, workdir=tmp_path / "work")
    crashed = [r for r in rows if r.case == "boom"]
    assert len(crashed) == 1 and crashed[0].status == "crash" and "SIGABRT" in crashed[0].failures[0]
    assert [r.status for r in rows if r.case == fine.id] == ["pass", "pass"]


def test_a_case_the_guest_cannot_load_is_an_error_row(tmp_path):
    env = HostGuest(tmp_path / "cache")
    _fake_features(env, ["host"])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    y = np.zeros((1, 3, 32, 32), np.float32)
    case = ArmCase(id="broken", label="ONNX fp32", kind="onnx", artifact=broken, input_names=("y_hat", "y"),
                   output_names=("proxy", "grad"), tolerance=Tolerance.for_precision("fp32"),
                   sets=[InputSet("random", y, y)], batch=1, x86=lambda arrays: {"proxy": y, "grad": y})
    rows, _ = check_on_arm([case], ["host"], env=env, workdir=tmp_path / "work")
    assert len(rows) == 1 and rows[0].status == "error" and rows[0].failures[0]


def test_check_on_arm_refuses_without_the_environment(tmp_path):
    env = ArmEnvironment(root=tmp_path / "empty", runner=FakeRunner())
    with pytest.raises(ArmEnvError, match="lacks apt, sysroot"):
        check_on_arm([], ["cortex-a53"], env=env)


def test_summary_lists_failures():
    rows = [ArmRow("a", "ONNX fp32", "resnet4", "cortex-a53", "fp asimd", "real", "pass"),
            ArmRow("b", "ExecuTorch int8", "resnet4", "max", "sme", "real", "FAIL", failures=["vs x86 real: grad cosine 0.9 < 0.99"])]
    s = summary(rows)
    assert s["passed"] == 1 and not s["all_passed"] and "grad cosine 0.9" in s["failed"][0]


# --------------------------------------------------------------------------------------------------------
# The real thing, where the cached environment exists


@pytest.mark.arm
@pytest.mark.slow
def test_tiny_artifacts_agree_with_x86_on_an_emulated_cortex_a53(tmp_path, request):
    env = ArmEnvironment()
    missing = env.ready()
    if missing:
        pytest.skip(missing)
    pytest.importorskip("executorch")
    pytest.importorskip("onnxruntime")
    from pgn import export
    from pgn.export.arm_verify import pgn_case

    # the module's ONNX artifact (ResNet-4, fp32, 32², batch 1) and the two ExecuTorch programs of the same model
    onnx, model = request.getfixturevalue("onnx_artifact")  # only now: a skipped test exports nothing
    cases = []
    for target, precision in (("executorch", "fp32"), ("executorch", "int8")):
        [r] = export.export(model, target, output_dir=tmp_path, size=(32, 32), precision=precision)
        assert r.ok, r.reason
        cases.append(pgn_case(r.artifact, model=model, n_random=1, n_real=1))
    cases.append(pgn_case(onnx, model=model, n_random=1, n_real=1))
    rows, facts = check_on_arm(cases, ["cortex-a53"], env=env, workdir=tmp_path / "work")
    assert facts["cortex-a53"]["guest"]["machine"] == "aarch64"
    assert "asimddp" not in facts["cortex-a53"]["guest"]["features"]
    assert len(rows) == 6
    assert all(r.status == "pass" for r in rows), markdown_table(rows)


# --------------------------------------------------------------------------------------------------------
# pgn-export --verify-on arm


def test_verify_on_arm_records_the_result_in_the_manifest(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from pgn.export import arm_verify, read_manifest
    from pgn.export.cli import main

    seen = []

    def fake_verify(artifact, *, model=None, say=None, **kw):
        seen.append((artifact, model))
        return {"passed": False, "cpus": {"cortex-a53": {}}, "failures": ["resnet4 ONNX fp32 on cortex-a53 (real): vs x86 grad rel 1e-3 > 1e-4"],
                "rows": [{"vs_x86": {"grad_max_rel": 1e-3}}]}

    monkeypatch.setattr(arm_verify, "verify_artifact_on_arm", fake_verify)
    result = CliRunner().invoke(main, ["--backbone", "resnet4", "--target", "onnx", "--size", "32", "32",
                                       "--output", str(tmp_path), "--verify-on", "arm"])
    assert result.exit_code == 1, result.output
    [(artifact, model)] = seen
    assert model is not None and artifact.suffix == ".onnx"
    assert read_manifest(artifact)["arm"]["passed"] is False
    assert "FAILED" in result.output and "recorded in its manifest" in result.output


def test_verify_on_arm_refuses_dynamic_artifacts_before_exporting(tmp_path):
    from click.testing import CliRunner

    from pgn.export.cli import main

    result = CliRunner().invoke(main, ["--backbone", "resnet4", "--target", "onnx", "--dynamic", "--output", str(tmp_path),
                                       "--verify-on", "arm"])
    assert result.exit_code == 1
    assert "drop --dynamic" in result.output and not list(tmp_path.glob("*.onnx"))
