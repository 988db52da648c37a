"""What the benchmark records about the machine: CPU name and the flags that decide which kernels run."""

import pytest

from pgn.benchmarks import environment
from pgn.benchmarks.environment import INT8_DOT_PRODUCT_FLAGS, cpu_flags, cpu_name

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni amx_int8 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni amx_int8 amx_tile
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes crc32 asimddp sve
CPU implementer\t: 0x41
"""
OLD_X86 = """model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx2 fma
"""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def use(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(environment, "CPUINFO", path)
        monkeypatch.setattr(environment.sys, "platform", "linux")

    return use


def test_x86_flags_and_name(cpuinfo):
    cpuinfo(X86)
    assert cpu_name() == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_flags() == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"]
    assert cpu_flags(INT8_DOT_PRODUCT_FLAGS) == ["avx512_vnni", "amx_int8"]


def test_arm_features(cpuinfo):
    cpuinfo(ARM)
    assert cpu_flags() == ["asimd", "asimddp", "sve"]
    assert cpu_flags(INT8_DOT_PRODUCT_FLAGS) == ["asimddp"]


def test_no_int8_dot_product(cpuinfo):
    cpuinfo(OLD_X86)
    assert cpu_name() == "AMD EPYC 7B12"
    assert cpu_flags(INT8_DOT_PRODUCT_FLAGS) == []


def test_no_cpuinfo_means_no_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "CPUINFO", tmp_path / "missing")
    assert cpu_flags() == []
    assert cpu_name()  # falls back to the platform module
