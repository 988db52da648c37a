"""The aarch64 environment: an emulated ARM Linux with the aarch64 builds of ExecuTorch, ONNX Runtime and PyTorch.

:class:`ArmEnvironment` builds it once in the user's cache folder (:func:`cache_dir`:
``$PGN_ARM_CACHE``, else ``$XDG_CACHE_HOME/pgn-toolkit/arm``, else ``~/.cache/pgn-toolkit/arm``) and re-uses it:

1. ``apt``: a private apt configuration (its own sources, lists and package cache inside the cache folder) for
   Debian 12 (bookworm: arm64 and amd64) and Debian 13 (trixie: amd64). Nothing of the system's apt or dpkg
   state changes: no foreign architecture is added, nothing is installed.
2. ``sysroot``: the arm64 ``.deb`` files of CPython 3.11 and the libraries it loads (:data:`SYSROOT_PACKAGES`),
   unpacked with ``dpkg-deb -x``.
3. ``qemu``: QEMU's user-mode emulator from Debian 13 (:data:`QEMU_PACKAGE`, static binaries), at least
   :data:`QEMU_MIN_VERSION` (Debian 12's QEMU 7.2 mis-emulates SME: ``-cpu max`` gave int8 gradients a 12 %
   error).
4. ``wheels``: the aarch64 wheels (:data:`WHEELS`, pinned) installed with ``pip --target --platform
   manylinux_2_28_aarch64``; ``torch`` and ``executorch`` with ``--no-deps`` (pip judges markers by the host).
5. ``stubs``: stand-ins for the NVIDIA libraries that the aarch64 torch wheel links (even ``libtorch_cpu.so``):
   shared libraries with the same sonames, version names and symbols, whose functions return an error,
   built with Debian's ``binutils-aarch64-linux-gnu`` (downloaded and unpacked into the cache, not installed).
6. per CPU model (:meth:`ArmEnvironment.cpu_root`): a root folder for ``qemu-aarch64 -L`` that links to the
   sysroot and adds ``proc/cpuinfo`` and ``sys/devices/system/cpu/cpu0/regs/identification/midr_el1``
   describing that core (under emulation the guest would otherwise read the host's x86 ``/proc/cpuinfo``).

Each step writes into a temporary folder, moves it into place, and records a stamp (``<step>.json``) holding
the pins it was built with. A step whose stamp is missing, unreadable, from other pins, or whose key files are
gone (a corrupt or half-deleted cache) is built again. A step that fails raises :class:`ArmEnvError`: one line
naming what is missing and where the log is.

Run it with ``python -m export.arm_env`` (builds and prints where) or through ``benchmarks/arm_check.sh``.
This module imports only the standard library, so it can be imported cheaply and tested without a network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import unquote

from pgn.errors import PGNError

from .arm_guest import HWCAP2_NAMES, HWCAP_NAMES  # defined in the guest script, which imports nothing of pgn

#: The Python version of the guest (Debian 12's CPython).
PYTHON_VERSION = "3.11"
#: The aarch64 wheels, pinned. torch and executorch are the host's versions (a .pte must run on the same runtime
#: version it was exported with); the rest are what their imports need.
WHEELS = {
    "torch": "2.14.1",
    "executorch": "1.5.1",
    "numpy": "2.4.6",
    "onnxruntime": "1.31.1",
}
#: Installed without version pins but with dependencies: what ``import torch`` and ``executorch.runtime`` import
#: (pip cannot resolve torch's and executorch's own dependencies for another platform; see the module docs).
WHEEL_DEPS = ("typing_extensions", "sympy", "filelock", "networkx", "jinja2", "fsspec", "flatbuffers",
              "ruamel.yaml", "tabulate", "packaging", "pyyaml")
#: The pip platform tag of the aarch64 wheels.
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
#: Debian suites: the guest's userland (and the host tools) from bookworm, QEMU from trixie.
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
GUEST_SUITE = "bookworm"
QEMU_SUITE = "trixie"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: arm64 packages unpacked into the sysroot: CPython 3.11 and every library it or the wheels load.
SYSROOT_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libstdc++6", "libgcc-s1", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5",
    "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libreadline8", "libgomp1", "libatomic1", "libdb5.3",
    "libgdbm6", "libnsl2", "libtirpc3", "libcrypt1", "libkrb5-3", "libk5crypto3", "libkrb5support0",
    "libgssapi-krb5-2", "libcom-err2", "libkeyutils1", "libzstd1",
)
#: QEMU's user-mode emulators (static binaries in Debian 13), and the oldest version accepted.
QEMU_PACKAGE = "qemu-user"
QEMU_MIN_VERSION = (10, 0)
#: The cross assembler and linker the NVIDIA stand-ins are built with (amd64 package, unpacked, not installed).
BINUTILS_PACKAGES = ("binutils-aarch64-linux-gnu", "libbinutils", "libjansson4")
#: The host tools the build needs (what provides each, for the one-line refusal).
HOST_TOOLS = {"apt-get": "apt (a Debian or Ubuntu host)", "dpkg-deb": "dpkg", "readelf": "binutils"}
#: NVIDIA sonames are recognized by these prefixes in torch's NEEDED entries.
NVIDIA_LIB = re.compile(r"^lib(cu|nv|cudnn|nccl|cufft|curand|cusparse|cusolver|cublas|cupti|cudss|nvshmem)")

#: CPU models the check emulates by default: no dot-product (cortex-a53), dot-product (cortex-a76), and QEMU's
#: everything-on model (max: SVE2, i8mm, bf16, SME). a64fx (SVE without dot-product) and neoverse-n1 also work.
DEFAULT_CPUS = ("cortex-a53", "cortex-a76", "max")
#: MIDR_EL1 of the named cores (implementer, variant, part, revision), for the guest's sysfs.
MIDR = {
    "cortex-a53": 0x410FD034,
    "cortex-a55": 0x412FD050,
    "cortex-a72": 0x410FD083,
    "cortex-a76": 0x414FD0B1,
    "cortex-a710": 0x412FD470,
    "neoverse-n1": 0x413FD0C1,
    "neoverse-v1": 0x411FD402,
    "neoverse-n2": 0x410FD490,
    "a64fx": 0x461F0010,
    "max": 0x000F0510,
}

STEPS = ("apt", "sysroot", "qemu", "wheels", "stubs", "bytecode")


class ArmEnvError(PGNError):
    """A step of the aarch64 environment failed: one line naming what is missing."""


def cache_dir() -> Path:
    """Where the environment lives: ``$PGN_ARM_CACHE``, else ``$XDG_CACHE_HOME/pgn-toolkit/arm``, else ``~/.cache/...``."""
    if os.environ.get("PGN_ARM_CACHE"):
        return Path(os.environ["PGN_ARM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pgn-toolkit" / "arm"


def pins() -> dict:
    """Everything a cached environment depends on; a change rebuilds the steps it concerns."""
    return {
        "python": PYTHON_VERSION, "wheels": dict(WHEELS), "wheel_deps": list(WHEEL_DEPS), "platform": WHEEL_PLATFORM,
        "guest_suite": GUEST_SUITE, "qemu_suite": QEMU_SUITE, "sysroot_packages": list(SYSROOT_PACKAGES),
        "qemu_package": QEMU_PACKAGE, "qemu_min_version": list(QEMU_MIN_VERSION), "binutils": list(BINUTILS_PACKAGES),
        "stub_format": 5,
    }


#: What each step reads from :func:`pins` (a change of anything else does not rebuild it).
STEP_PINS = {
    "apt": ("guest_suite", "qemu_suite"),
    "sysroot": ("guest_suite", "python", "sysroot_packages"),
    "qemu": ("qemu_suite", "qemu_package", "qemu_min_version"),
    "wheels": ("python", "wheels", "wheel_deps", "platform"),
    "stubs": ("wheels", "binutils", "stub_format"),
    "bytecode": ("python", "wheels", "wheel_deps", "sysroot_packages"),
}


def step_pins(step: str) -> dict:
    """The part of :func:`pins` that ``step`` is built from."""
    p = pins()
    return {k: p[k] for k in STEP_PINS[step]}


Runner = Callable[[Sequence[str], dict], subprocess.CompletedProcess]


def run_command(cmd: Sequence[str], kwargs: dict) -> subprocess.CompletedProcess:
    """Run ``cmd`` (the default :class:`ArmEnvironment` runner): output captured as text, never raising on failure."""
    return subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)


@dataclass
class ArmEnvironment:
    """The cached aarch64 environment (see the module docs); :meth:`ensure` builds what is missing.

    Args:
        root: the cache folder (:func:`cache_dir` by default).
        runner: runs a command (tests replace it to simulate failures without a network).
        say: progress messages (one line each).
    """

    root: Path = field(default_factory=cache_dir)
    runner: Runner = run_command
    say: Callable[[str], None] = lambda message: None

    # -- where things are ------------------------------------------------------------------------------
    @property
    def sysroot(self) -> Path:
        """The unpacked arm64 Debian userland."""
        return self.root / "sysroot"

    @property
    def qemu(self) -> Path:
        """The ``qemu-aarch64`` binary."""
        return self.root / "qemu" / "usr" / "bin" / "qemu-aarch64"

    @property
    def python(self) -> Path:
        """The guest's CPython (an aarch64 binary: run it through :meth:`guest_command`)."""
        return self.sysroot / "usr" / "bin" / f"python{PYTHON_VERSION}"

    @property
    def site_dirs(self) -> list[Path]:
        """The guest's wheel folders, in import order."""
        return [self.root / "wheels" / "deps", self.root / "wheels" / "torch"]

    @property
    def stub_dir(self) -> Path:
        """The NVIDIA stand-in libraries (first on the guest's library path)."""
        return self.root / "stubs" / "lib"

    @property
    def log_dir(self) -> Path:
        """One log per step."""
        return self.root / "logs"

    def key_files(self, step: str) -> list[Path]:
        """Files whose absence means ``step`` must be built again."""
        return {
            "apt": [self.root / "apt" / "apt.conf", self.root / "apt" / "sources.list"],
            "sysroot": [self.python, self.sysroot / "usr" / "lib" / "aarch64-linux-gnu" / "libc.so.6",
                        self.sysroot / "usr" / "lib" / f"python{PYTHON_VERSION}" / "os.py"],
            "qemu": [self.qemu],
            "wheels": [self.site_dirs[0] / "numpy" / "__init__.py", self.site_dirs[0] / "onnxruntime" / "__init__.py",
                       self.site_dirs[1] / "torch" / "__init__.py", self.site_dirs[1] / "executorch" / "runtime" / "__init__.py"],
            "stubs": [self.stub_dir / ".complete"],
            "bytecode": [self.site_dirs[1] / "torch" / "__pycache__" / f"__init__.cpython-{PYTHON_VERSION.replace('.', '')}.pyc"],
        }[step]

    # -- cache state -----------------------------------------------------------------------------------
    def stamp_path(self, step: str) -> Path:
        """The stamp recording that ``step`` is complete, and with which pins."""
        return self.root / f"{step}.json"

    def cached(self, step: str) -> bool:
        """Whether ``step`` is complete in the cache, with today's pins and its key files present."""
        try:
            stamp = json.loads(self.stamp_path(step).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(stamp, dict) or stamp.get("pins") != step_pins(step):
            return False
        return all(p.exists() for p in self.key_files(step))

    def missing_steps(self) -> list[str]:
        """The steps :meth:`ensure` would build now."""
        return [s for s in STEPS if not self.cached(s)]

    def ready(self) -> str | None:
        """``None`` when every step is cached, else one line saying what is missing (for skips)."""
        missing = self.missing_steps()
        if not missing:
            return None
        return (f"the aarch64 environment in {self.root} lacks {', '.join(missing)}: "
                "build it with benchmarks/arm_check.sh --setup-only (downloads about 600 MB)")

    def stamp(self, step: str, details: dict | None = None) -> None:
        """Record ``step`` as complete."""
        data = {"pins": step_pins(step), "built": time.strftime("%Y-%m-%dT%H:%M:%S"), **(details or {})}
        self.stamp_path(step).write_text(json.dumps(data, indent=2) + "\n")

    def details(self, step: str) -> dict:
        """What the stamp of ``step`` records (versions of what was downloaded); empty if none."""
        try:
            return json.loads(self.stamp_path(step).read_text())
        except (OSError, ValueError):
            return {}

    # -- building --------------------------------------------------------------------------------------
    def ensure(self, steps: Sequence[str] = STEPS) -> "ArmEnvironment":
        """Build every step of ``steps`` that is not cached; returns ``self``. :class:`ArmEnvError` on failure."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise ArmEnvError(f"cannot create the aarch64 environment's cache folder {self.root}: {e.strerror}; "
                              "set PGN_ARM_CACHE to a writable folder") from None
        for step in steps:
            if self.cached(step):
                continue
            if self.stamp_path(step).exists():
                self.say(f"{step}: cached copy is incomplete or from other pins; building it again")
            self.stamp_path(step).unlink(missing_ok=True)
            self.say(f"{step}: building")
            start = time.time()
            details = getattr(self, f"_build_{step}")() or {}
            self.stamp(step, {"seconds": round(time.time() - start, 1), **details})
        return self

    def need_tool(self, name: str, provider: str | None = None) -> str:
        """The path of host tool ``name``; :class:`ArmEnvError` naming what provides it if it is not on PATH."""
        path = shutil.which(name)
        if path is None:
            raise ArmEnvError(f"the aarch64 environment needs {name!r} on PATH (from {provider or HOST_TOOLS.get(name, name)}), "
                              "which this machine lacks")
        return path

    def run(self, step: str, what: str, cmd: Sequence[str], *, timeout: float = 1800, env: dict | None = None,
            cwd: Path | None = None, ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess:
        """Run one command of ``step``, appending its output to the step's log; :class:`ArmEnvError` saying
        ``what`` failed (and where the log is) if it cannot start, fails (an exit status not in ``ok``) or times out."""
        log = self.log_dir / f"{step}.log"
        kwargs = {"timeout": timeout, "env": env, "cwd": cwd}
        try:
            proc = self.runner(cmd, kwargs)
        except FileNotFoundError:
            raise ArmEnvError(f"{step}: {what} failed: {cmd[0]!r} is not installed") from None
        except subprocess.TimeoutExpired:
            raise ArmEnvError(f"{step}: {what} did not finish in {timeout:.0f} s (network down?); log: {log}") from None
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{proc.stdout or ''}{proc.stderr or ''}\n[exit {proc.returncode}]\n")
        if proc.returncode not in ok:
            detail = _last_error_line(proc.stderr or proc.stdout or "")
            raise ArmEnvError(f"{step}: {what} failed{': ' + detail if detail else ''} (log: {log})")
        return proc

    def fresh(self, folder: Path) -> Path:
        """An empty temporary folder beside ``folder`` (moved into place by :meth:`commit`)."""
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, folder: Path) -> None:
        """Replace ``folder`` by the finished ``tmp``."""
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    # apt ------------------------------------------------------------------------------------------------
    def apt_env(self) -> dict:
        """The environment of apt commands: the private configuration (:meth:`_build_apt`)."""
        return {**os.environ, "APT_CONFIG": str(self.root / "apt" / "apt.conf"), "LC_ALL": "C"}

    def _build_apt(self) -> dict:
        self.need_tool("apt-get")
        if not KEYRING.exists():
            raise ArmEnvError(f"apt: Debian's archive keyring {KEYRING} is missing (package debian-archive-keyring)")
        tmp = self.fresh(self.root / "apt")
        final = self.root / "apt"
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        key = f"signed-by={KEYRING}"
        (tmp / "sources.list").write_text(
            f"deb [arch=arm64,amd64 {key}] {DEBIAN_MIRROR} {GUEST_SUITE} main\n"
            f"deb [arch=arm64,amd64 {key}] {DEBIAN_SECURITY} {GUEST_SUITE}-security main\n"
            f"deb [arch=amd64 {key}] {DEBIAN_MIRROR} {QEMU_SUITE} main\n")
        conf = "\n".join([
            f'Dir::Etc::sourcelist "{final}/sources.list";',
            f'Dir::Etc::sourceparts "{final}/sources.list.d";',
            f'Dir::Etc::preferencesparts "{final}/preferences.d";',
            f'Dir::State::Lists "{final}/lists";',
            f'Dir::Cache "{final}/cache";',
            'APT::Architectures { "amd64"; "arm64"; };',
            'APT::Sandbox::User "root";' if os.geteuid() == 0 else "",
            'Acquire::Languages "none";',
            'Acquire::Retries "2";',
            "",
        ])
        (tmp / "apt.conf").write_text(conf)
        self.commit(tmp, final)
        self.run("apt", f"apt-get update (Debian {GUEST_SUITE} and {QEMU_SUITE} indexes from {DEBIAN_MIRROR})",
                 ["apt-get", "-q", "update"], env=self.apt_env(), timeout=900)
        return {"sources": (final / "sources.list").read_text().splitlines()}

    def apt_download(self, step: str, packages: Sequence[str], dest: Path) -> list[Path]:
        """``apt-get download`` ``packages`` (``name:arch/suite``) into ``dest``; the ``.deb`` files."""
        dest.mkdir(parents=True, exist_ok=True)
        self.run(step, f"apt-get download of {', '.join(packages[:4])}{'…' if len(packages) > 4 else ''}",
                 ["apt-get", "-q", "download", *packages], env=self.apt_env(), cwd=dest, timeout=1800)
        debs = sorted(dest.glob("*.deb"))
        names = {d.name.split("_")[0] for d in debs}
        missing = [p for p in packages if p.split(":")[0].split("/")[0] not in names]
        if missing:
            raise ArmEnvError(f"{step}: apt-get download did not fetch {', '.join(missing)} (log: {self.log_dir / (step + '.log')})")
        return debs

    def unpack(self, step: str, debs: Sequence[Path], dest: Path) -> None:
        """``dpkg-deb -x`` each of ``debs`` into ``dest``."""
        self.need_tool("dpkg-deb")
        for deb in debs:
            self.run(step, f"unpacking {deb.name}", ["dpkg-deb", "-x", str(deb), str(dest)], timeout=600)

    # sysroot --------------------------------------------------------------------------------------------
    def _build_sysroot(self) -> dict:
        tmp = self.fresh(self.sysroot)
        with tempfile.TemporaryDirectory(dir=self.root) as d:
            debs = self.apt_download("sysroot", [f"{p}:arm64" for p in SYSROOT_PACKAGES], Path(d))
            self.unpack("sysroot", debs, tmp)
            merge_usr(tmp)
            versions = {deb.name.split("_")[0]: unquote(deb.name.split("_")[1]) for deb in debs}
        self.commit(tmp, self.sysroot)
        if not self.python.exists():
            raise ArmEnvError(f"sysroot: {self.python} is missing after unpacking python3.11-minimal")
        return {"debs": versions}

    # qemu -----------------------------------------------------------------------------------------------
    def _build_qemu(self) -> dict:
        folder = self.root / "qemu"
        tmp = self.fresh(folder)
        with tempfile.TemporaryDirectory(dir=self.root) as d:
            debs = self.apt_download("qemu", [f"{QEMU_PACKAGE}:amd64/{QEMU_SUITE}"], Path(d))
            self.unpack("qemu", debs, tmp)
            version = unquote(debs[0].name.split("_")[1])
        for other in (tmp / "usr" / "bin").glob("qemu-*"):
            if other.name != "qemu-aarch64":  # the package holds every architecture's emulator (450 MB)
                other.unlink()
        self.commit(tmp, folder)
        if not self.qemu.exists():
            raise ArmEnvError(f"qemu: {QEMU_PACKAGE} from Debian {QEMU_SUITE} has no usr/bin/qemu-aarch64")
        proc = self.run("qemu", "qemu-aarch64 --version", [str(self.qemu), "--version"], timeout=60)
        found = qemu_version(proc.stdout)
        if found is None or found < QEMU_MIN_VERSION:
            raise ArmEnvError(f"qemu: {self.qemu} is version {'.'.join(map(str, found or ())) or 'unknown'}, "
                              f"the check needs at least {'.'.join(map(str, QEMU_MIN_VERSION))}")
        return {"deb": version, "qemu": ".".join(map(str, found))}

    # wheels ---------------------------------------------------------------------------------------------
    def pip_target(self, target: Path, requirements: Sequence[str], *, no_deps: bool) -> None:
        """``pip install --target`` the aarch64 wheels of ``requirements`` (with the host's pip)."""
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(target), "--platform", WHEEL_PLATFORM, "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--implementation", "cp", *(["--no-deps"] if no_deps else []),
               *requirements]
        self.run("wheels", f"pip install of the {WHEEL_PLATFORM} wheels {', '.join(requirements)}", cmd, timeout=3600)

    def _build_wheels(self) -> dict:
        folder = self.root / "wheels"
        tmp = self.fresh(folder)
        heavy = ("torch", "executorch")
        self.pip_target(tmp / "deps", [f"{n}=={v}" for n, v in WHEELS.items() if n not in heavy] + list(WHEEL_DEPS),
                        no_deps=False)
        self.pip_target(tmp / "torch", [f"{n}=={WHEELS[n]}" for n in heavy], no_deps=True)
        self.commit(tmp, folder)
        versions = {}
        for site in self.site_dirs:
            for info in site.glob("*.dist-info"):
                name, _, version = info.name[: -len(".dist-info")].partition("-")
                versions[name] = version
        return {"installed": dict(sorted(versions.items()))}

    # stubs ----------------------------------------------------------------------------------------------
    def cross_tool(self, name: str) -> list[str]:
        """The command of cross binutils tool ``name`` (``as``, ``ld``): on PATH (the cross compiler's), else the copy
        unpacked into the cache (downloaded on first use)."""
        found = shutil.which(f"aarch64-linux-gnu-{name}")
        if found:
            return [found]
        base = self.root / "binutils"
        tool = base / "usr" / "bin" / f"aarch64-linux-gnu-{name}"
        if not tool.exists():
            tmp = self.fresh(base)
            with tempfile.TemporaryDirectory(dir=self.root) as d:
                debs = self.apt_download("stubs", [f"{p}:amd64/{GUEST_SUITE}" for p in BINUTILS_PACKAGES], Path(d))
                self.unpack("stubs", debs, tmp)
            self.commit(tmp, base)
        if not tool.exists():
            raise ArmEnvError(f"stubs: binutils-aarch64-linux-gnu has no {tool.name}")
        libdir = base / "usr" / "lib" / "x86_64-linux-gnu"
        return ["env", f"LD_LIBRARY_PATH={libdir}", str(tool)]

    def _build_stubs(self) -> dict:
        self.need_tool("readelf")
        torch_dir = self.site_dirs[1] / "torch"
        needs = nvidia_needs(self, torch_dir)
        tmp = self.fresh(self.root / "stubs")
        lib = tmp / "lib"
        lib.mkdir()
        asm, ld = self.cross_tool("as"), self.cross_tool("ld")
        for soname, symbols in sorted(needs.items()):
            source, script = stub_sources(soname, symbols)
            (tmp / f"{soname}.s").write_text(source)
            (tmp / f"{soname}.map").write_text(script)
            obj = tmp / f"{soname}.o"
            self.run("stubs", f"assembling the stand-in {soname}", [*asm, "-o", str(obj), str(tmp / f"{soname}.s")], timeout=120)
            self.run("stubs", f"linking the stand-in {soname}",
                     [*ld, "-shared", "-soname", soname, "--version-script", str(tmp / f"{soname}.map"),
                      "-o", str(lib / soname), str(obj)], timeout=120)
        (lib / ".complete").write_text("\n".join(sorted(needs)) + "\n")
        self.commit(tmp, self.root / "stubs")
        return {"stand_ins": {k: sum(len(v) for v in vs.values()) for k, vs in sorted(needs.items())}}

    # bytecode -------------------------------------------------------------------------------------------
    def _build_bytecode(self) -> dict:
        """Compile the guest's standard library and wheels to bytecode with the host's CPython 3.11 (same bytecode
        format): under emulation, compiling torch's modules on import would take minutes on every run."""
        if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
            self.say(f"bytecode: skipped (the host runs Python {sys.version_info.major}.{sys.version_info.minor}, "
                     f"the guest {PYTHON_VERSION}: the guest compiles on first import instead)")
            (self.site_dirs[1] / "torch" / "__pycache__").mkdir(exist_ok=True)
            self.key_files("bytecode")[0].touch()
            return {"compiled": False}
        folders = [self.sysroot / "usr" / "lib" / f"python{PYTHON_VERSION}", *self.site_dirs]
        self.run("bytecode", "compiling the guest's Python modules to bytecode",
                 [sys.executable, "-m", "compileall", "-q", "-j", "0", *map(str, folders)], timeout=1800,
                 ok=(0, 1))  # 1: some files do not compile (test data with old syntax); they would not on the guest either
        return {"compiled": True}

    # running ----------------------------------------------------------------------------------------------
    def cpu_root(self, cpu: str, hwcaps: Sequence[str] = ()) -> Path:
        """The ``-L`` root of CPU model ``cpu``: links to the sysroot plus its own ``/proc/cpuinfo``, MIDR and a
        one-core ``/sys/devices/system/cpu`` (``possible``, ``present``, ``online``, ``kernel_max``).

        ``hwcaps`` are the feature names written into ``/proc/cpuinfo`` (the guest's own ``AT_HWCAP`` decoded,
        see :mod:`export.arm_guest`); the file is rewritten each time.
        """
        root = self.root / "cpus" / cpu
        (root / "proc").mkdir(parents=True, exist_ok=True)
        for entry in self.sysroot.iterdir():
            link = root / entry.name
            if entry.name not in ("proc", "sys") and not link.is_symlink():
                link.symlink_to(Path("..") / ".." / "sysroot" / entry.name)
        midr = MIDR.get(cpu, MIDR["max"])
        (root / "proc" / "cpuinfo").write_text(fake_cpuinfo(midr, hwcaps))
        cpu_dir = root / "sys" / "devices" / "system" / "cpu"
        cpu_dir.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present", "online"):  # one core: without these, cpuinfo counts ~2^32 of them
            (cpu_dir / name).write_text("0\n")
        (cpu_dir / "kernel_max").write_text("0\n")
        ident = cpu_dir / "cpu0" / "regs" / "identification"
        ident.mkdir(parents=True, exist_ok=True)
        (ident / "midr_el1").write_text(f"0x{midr:016x}\n")
        (ident / "revidr_el1").write_text("0x0000000000000000\n")
        return root

    def guest_env(self) -> dict:
        """The guest's environment: its wheel folders, the stand-ins first on the library path, no host Python."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_", "OMP_", "QEMU_"))}
        env.update(
            PYTHONPATH=os.pathsep.join(map(str, self.site_dirs)),
            PYTHONNOUSERSITE="1",
            LD_LIBRARY_PATH=str(self.stub_dir),
            OMP_NUM_THREADS="1",
            LC_ALL="C.UTF-8",
        )
        return env

    def guest_command(self, cpu: str, args: Sequence[str], hwcaps: Sequence[str] = ()) -> list[str]:
        """``qemu-aarch64 -cpu <cpu> -L <root> python3.11 args…``."""
        root = self.cpu_root(cpu, hwcaps)
        return [str(self.qemu), "-cpu", cpu, "-L", str(root), str(self.python), *args]


def merge_usr(root: Path) -> None:
    """Move ``lib``, ``bin`` and ``sbin`` of an unpacked Debian tree into ``usr/`` and link them there (as on a
    merged-/usr system: the packages still ship /lib paths, the loader finds everything in one place)."""
    for name in ("lib", "bin", "sbin"):
        top, usr = root / name, root / "usr" / name
        if top.is_symlink() or not top.exists():
            continue
        usr.mkdir(parents=True, exist_ok=True)
        for item in list(top.rglob("*")):
            dest = usr / item.relative_to(top)
            if item.is_dir() and not item.is_symlink():
                dest.mkdir(parents=True, exist_ok=True)
            elif not dest.exists() and not dest.is_symlink():
                item.rename(dest)
        shutil.rmtree(top)
        top.symlink_to(Path("usr") / name)


def qemu_version(text: str) -> tuple[int, ...] | None:
    """The version in ``qemu-aarch64 --version`` output, e.g. (10, 0, 2)."""
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def nvidia_needs(env: ArmEnvironment, torch_dir: Path) -> dict[str, dict[str, list[str]]]:
    """NVIDIA libraries the aarch64 torch wheel's shared objects need and torch does not ship:
    soname → version name (``""``: unversioned symbols) → symbols (``name`` or ``name:object`` for data)."""
    objects = sorted(p for p in torch_dir.rglob("*.so*") if p.is_file())
    if not objects:
        raise ArmEnvError(f"stubs: no shared libraries under {torch_dir}: the torch wheel is missing; delete {env.root / 'wheels.json'}")
    shipped = {p.name for p in objects}
    needs: dict[str, dict[str, set[str]]] = {}
    defined: set[str] = set()
    loose: dict[Path, tuple[list[str], set[str]]] = {}  # object → (NVIDIA libs it needs, unversioned undefined symbols)
    for obj in objects:
        dyn = env.run("stubs", f"readelf -d {obj.name}", ["readelf", "-dW", str(obj)], timeout=120).stdout
        needed = [n for n in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
                  if NVIDIA_LIB.match(n) and n not in shipped]
        versions_of: dict[str, str] = {}
        if needed:
            for n in needed:
                needs.setdefault(n, {})
            ver = env.run("stubs", f"readelf -V {obj.name}", ["readelf", "-VW", str(obj)], timeout=120).stdout
            current = None
            for line in ver.splitlines():
                m = re.search(r"File: (\S+)\s+Cnt:", line)
                if m:
                    current = m.group(1)
                    continue
                m = re.search(r"Name: (\S+)\s+Flags:", line)
                if m and current in needs:
                    versions_of[m.group(1)] = current
                    needs[current].setdefault(m.group(1), set())
        syms = env.run("stubs", f"readelf --dyn-syms {obj.name}", ["readelf", "--dyn-syms", "-W", str(obj)], timeout=300).stdout
        unversioned: set[str] = set()
        for line in syms.splitlines():
            parts = line.split()
            if len(parts) < 8 or not parts[0].endswith(":"):
                continue
            kind, bind, ndx, name = parts[3], parts[4], parts[6], parts[7]
            base, _, version = name.partition("@")
            if ndx != "UND":
                defined.add(base)
                continue
            if bind != "GLOBAL":
                continue
            entry = f"{base}:object" if kind == "OBJECT" else base
            version = version.lstrip("@")
            if version and versions_of.get(version):
                needs[versions_of[version]].setdefault(version, set()).add(entry)
            elif not version and needed:
                unversioned.add(entry)
        if needed:
            loose[obj] = (needed, unversioned)
    # unversioned symbols that neither torch nor the sysroot's libraries define (libstdc++ symbols can appear
    # unversioned: a stand-in must never shadow them): every NVIDIA stand-in without version names gets all of them
    # (the loader searches an object's whole dependency tree, so one of them is always in reach)
    for lib in sorted((env.sysroot / "usr" / "lib" / "aarch64-linux-gnu").glob("*.so*")):
        if lib.is_file() and not lib.is_symlink():
            out = env.run("stubs", f"readelf --dyn-syms {lib.name}", ["readelf", "--dyn-syms", "-W", str(lib)], timeout=300).stdout
            defined.update(p[7].split("@")[0] for p in (l.split() for l in out.splitlines())
                           if len(p) >= 8 and p[0].endswith(":") and p[6] != "UND")
    missing = {s for _, unversioned in loose.values() for s in unversioned
               if s.split(":")[0] not in defined and not s.startswith(CXX_RUNTIME_PREFIXES)}
    homes = [lib for lib, vs in needs.items() if not vs] or sorted(needs)[:1]
    for lib in homes:
        if not needs[lib] or "" in needs[lib]:
            needs[lib].setdefault("", set()).update(missing)
    return {lib: {v: sorted(s) for v, s in vs.items()} for lib, vs in needs.items()}


def stub_sources(soname: str, versions: dict[str, list[str]]) -> tuple[str, str]:
    """Assembly and version script of a stand-in library: every function returns 35 (CUDA's "insufficient
    driver", so torch reports no GPU), every data symbol is 64 zero bytes, each in the version node asked for
    (``""``: unversioned)."""
    text, data, script, done = [".text"], [".data"], [], set()
    for version, symbols in sorted(versions.items()):
        body = []
        for entry in symbols:
            name, _, kind = entry.partition(":")
            if name in done:
                continue
            done.add(name)
            body.append(name)
            if kind == "object":
                data += [f".globl {name}", f".type {name}, %object", f".size {name}, 64", f"{name}:", "    .zero 64"]
            else:
                text += [f".globl {name}", f".type {name}, %function", f"{name}:", "    mov w0, #35", "    ret"]
        exported = "".join(f"    {n};\n" for n in body)
        script.append(f"{version} {{\n  global:\n{exported}}};\n" if version else f"{{\n  global:\n{exported}  local: *;\n}};\n")
    if not done:
        text += [".globl __pgn_stand_in", ".type __pgn_stand_in, %function", "__pgn_stand_in:", "    ret"]
        script = ["{ global: __pgn_stand_in; local: *; };\n"]
    return "\n".join(text + data) + "\n", "".join(script)


#: Mangled names of the C++ runtime (libstdc++, libgcc): never stood in for, even when the sysroot lacks them.
CXX_RUNTIME_PREFIXES = ("_ZNSt", "_ZNKSt", "_ZSt", "_ZTISt", "_ZTVSt", "_ZTSSt", "_ZNSo", "_ZNSi", "_ZdlPv", "_ZdaPv",
                        "_Znwm", "_Znam", "__cxa_", "__gxx_", "_Unwind_", "__gcc_")




def decode_hwcaps(hwcap: int, hwcap2: int) -> list[str]:
    """Feature names of the AT_HWCAP and AT_HWCAP2 words, in /proc/cpuinfo order."""
    out = [n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1]
    out += [n for i, n in enumerate(HWCAP2_NAMES) if hwcap2 >> i & 1]
    return out


def fake_cpuinfo(midr: int, hwcaps: Sequence[str], cpus: int = 1) -> str:
    """A ``/proc/cpuinfo`` of ``cpus`` aarch64 cores with MIDR ``midr`` and features ``hwcaps``."""
    block = (f"processor\t: {{i}}\nBogoMIPS\t: 50.00\nFeatures\t: {' '.join(hwcaps) or 'fp asimd'}\n"
             f"CPU implementer\t: 0x{midr >> 24 & 0xff:02x}\nCPU architecture: 8\nCPU variant\t: 0x{midr >> 20 & 0xf:x}\n"
             f"CPU part\t: 0x{midr >> 4 & 0xfff:03x}\nCPU revision\t: {midr & 0xf}\n\n")
    return "".join(block.format(i=i) for i in range(cpus))


def _last_error_line(text: str) -> str:
    """The most telling line of a failed command's output (an ``E:``/``ERROR:`` line, else the last one)."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for line in reversed(lines):
        if line.startswith(("E:", "ERROR:", "error:")) or "rror" in line[:40]:
            return line[:240]
    return lines[-1][:240] if lines else ""


def digest(path: Path) -> str:
    """sha256 of a file (short)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.arm_env [--status]``: build the environment (or only say what is cached)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m export.arm_env", description=__doc__.splitlines()[0])
    parser.add_argument("--status", action="store_true", help="only say which steps are cached")
    args = parser.parse_args(argv)
    env = ArmEnvironment(say=lambda m: print(f"arm env: {m}", file=sys.stderr, flush=True))
    if args.status:
        print(env.ready() or f"the aarch64 environment in {env.root} is complete")
        return 0
    try:
        env.ensure()
    except ArmEnvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"the aarch64 environment is ready in {env.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
