"""What one ``pgn-bench`` run measures: a validated, frozen configuration."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgn.export.graph_options import GraphOptions
from pgn.errors import PGNError
from pgn.inputs import CHECK_VALUES, nearest_valid_size

from .models import DEFAULT_MODELS, FULL_MODELS, resolve_model, size_multiple
from .runtimes import default_runtimes, resolve_runtime

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Matrix:
    """What a run measures where the options leave it open.

    Args:
        name: ``quick`` (a plain ``pgn-bench``) or ``full`` (``pgn-bench --full``).
        models: model names.
        size: square input size.
        repeats: timed calls per measurement.
        warmup: untimed calls before timing, per device (a CPU settles after one or two; a GPU needs clocks up
            and autotuning done).
    """

    name: str
    models: tuple[str, ...]
    size: int
    repeats: int
    warmup: dict

    def runtimes(self, device: str) -> tuple[str, ...]:
        """The runtimes of this matrix on ``device`` (:func:`benchmarks.runtimes.default_runtimes`)."""
        return default_runtimes(device, full=self.name == "full")


#: A plain ``pgn-bench``: the paper's question (VGG-19 and VGG-11 against the four PGNs) on the fp32 runtime of
#: every family, at 128² with 5 timed calls, to finish in about a minute and a half on a 2-core CPU.
QUICK = Matrix("quick", DEFAULT_MODELS, 128, 5, {"cpu": 1, "cuda": 10})
#: ``pgn-bench --full``: the paper's 224², cached-target VGG, every precision and compiler, 10 timed calls.
FULL = Matrix("full", FULL_MODELS, 224, 10, {"cpu": 2, "cuda": 10})
MATRICES = {m.name: m for m in (QUICK, FULL)}
#: The input size of a plain run (the paper's 224² is ``--size 224`` or ``--full``).
DEFAULT_SIZE = QUICK.size


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark run.

    Args:
        device: ``cpu`` or ``cuda``.
        full: take what the options leave open from the full matrix (:data:`FULL`) instead of the quick one
            (:data:`QUICK`).
        runtimes: runtime names (:data:`benchmarks.runtimes.RUNTIMES`); None: the matrix's runtimes for the device.
        models: model names (:mod:`benchmarks.models`); None: the matrix's (VGG-19, VGG-11 and the paper's four
            PGNs; the full matrix adds VGG-19 with cached target features).
        batch: image pairs per gradient call.
        sizes: square sizes or (H, W) pairs; more than one is a resolution sweep. None: the matrix's (128², full 224²).
        repeats: timed calls per measurement; None: the matrix's (5, full 10).
        warmup: untimed calls before timing; None: the matrix's (CPU 1, full 2; CUDA 10).
        threads: intra-op threads of every runtime; None: all usable cores.
        memory_calls: calls inside the peak-memory measurement.
        seed: seed of the random PGN and VGG weights (timing and memory do not depend on weight values).
        weights: PGN weights: None (seeded random init), ``paper`` (the authors' released checkpoints, from
            the local cache) or a directory holding ``<model>.pt`` / ``<model>.pth`` files.
        timeout: seconds one worker process may take before its row is marked failed.
        check_values: when the PyTorch modules read their inputs to check them for NaN and range (``auto``: on
            the CPU only, since on a GPU it synchronizes every call; ``always``: measure what that costs;
            ``never``), see :mod:`pgn.inputs`.
        export_jobs: how many artifact exports run at once. Every artifact is exported before the first
            measurement, so parallel exports never overlap a timed call; most of an export (tracing, lowering,
            quantization passes) runs on one core.
        graph_options: export-graph options of the exported runtimes (:class:`export.graph_options.GraphOptions`
            text; options it leaves out keep each export target's defaults).
        cache: keep exported artifacts between runs in ``cache_dir`` (:mod:`export.cache`); False exports afresh
            into the run's temporary folder.
        cache_dir: the artifact cache; None: :func:`export.cache.default_cache_dir` ``("bench")``.
    """

    device: str = "cpu"
    full: bool = False
    runtimes: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    batch: int = 1
    sizes: tuple[tuple[int, int], ...] | None = None
    repeats: int | None = None
    warmup: int | None = None
    threads: int | None = None
    memory_calls: int = 2
    seed: int = 0
    weights: str | None = None
    timeout: float = 900.0
    check_values: str = "auto"
    export_jobs: int = 2
    graph_options: str = "default"
    cache: bool = True
    cache_dir: str | None = None
    resolved_weights: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise PGNError(f"unknown device {self.device!r}: use cpu or cuda")
        matrix = self.matrix
        runtimes = tuple(self.runtimes) if self.runtimes is not None else matrix.runtimes(self.device)
        for name in runtimes:
            resolve_runtime(name)
        if not runtimes:
            raise PGNError("no runtimes given")
        models = tuple(self.models) if self.models is not None else matrix.models
        if not models:
            raise PGNError("no models given")
        specs = [resolve_model(m) for m in models]
        sizes = tuple((s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
                      for s in (self.sizes if self.sizes is not None else (matrix.size,)))
        if self.repeats is None:
            object.__setattr__(self, "repeats", matrix.repeats)
        if not sizes:
            raise PGNError("no sizes given")
        for value, what in ((self.batch, "batch"), (self.repeats, "repeats"), (self.memory_calls, "memory_calls")):
            if int(value) < 1:
                raise PGNError(f"{what} must be ≥ 1, got {value}")
        if self.warmup is not None and self.warmup < 0:
            raise PGNError(f"warmup must be ≥ 0, got {self.warmup}")
        if self.check_values not in CHECK_VALUES:
            raise PGNError(f"check_values must be one of {', '.join(CHECK_VALUES)}, got {self.check_values!r}")
        if isinstance(self.export_jobs, bool) or not isinstance(self.export_jobs, int) or self.export_jobs < 1:
            raise PGNError(f"export_jobs must be a positive integer, got {self.export_jobs!r}")
        GraphOptions.parse(self.graph_options)  # checked now; each export target fills in its own defaults
        if self.threads is not None and self.threads < 1:
            raise PGNError(f"threads must be ≥ 1, got {self.threads}")
        if not 0 < self.timeout < float("inf"):
            raise PGNError(f"timeout must be a positive number of seconds, got {self.timeout}")
        for spec in specs:
            multiple = size_multiple(spec)
            for h, w in sizes:
                if h < multiple or w < multiple or h % multiple or w % multiple:
                    raise PGNError(
                        f"size {h}x{w} does not fit {spec.name}: height and width must be multiples of {multiple} "
                        f"(nearest: {nearest_valid_size(h, multiple)})"
                    )
        object.__setattr__(self, "runtimes", tuple(dict.fromkeys(runtimes)))
        object.__setattr__(self, "models", tuple(dict.fromkeys(models)))
        object.__setattr__(self, "sizes", tuple(dict.fromkeys(sizes)))
        object.__setattr__(self, "resolved_weights", {s.name: self._weights_for(s.name) for s in specs if not s.is_teacher})

    def _weights_for(self, name: str) -> str | None:
        if self.weights is None:
            return None
        if self.weights == "paper":
            from pgn.checkpoint import paper_checkpoint_path

            return str(paper_checkpoint_path(name))  # a one-line error naming the file and its URL if missing
        folder = Path(self.weights)
        if not folder.is_dir():
            raise PGNError(f"--weights must be 'paper' or a directory of <model>.pt files; {folder} is not a directory")
        for suffix in (".pt", ".pth"):
            if (folder / f"{name}{suffix}").is_file():
                return str(folder / f"{name}{suffix}")
        raise PGNError(f"no checkpoint for {name} in {folder}: expected {name}.pt or {name}.pth")

    @property
    def matrix(self) -> Matrix:
        """Where the options left open come from: :data:`FULL` or :data:`QUICK`."""
        return FULL if self.full else QUICK

    @property
    def effective_warmup(self) -> int:
        """Untimed calls actually used."""
        return self.matrix.warmup[self.device] if self.warmup is None else self.warmup

    @property
    def effective_cache_dir(self) -> Path | None:
        """The artifact cache folder, None without a cache."""
        if not self.cache:
            return None
        from pgn.export.cache import default_cache_dir

        return Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir("bench")

    @property
    def effective_threads(self) -> int:
        """Intra-op threads actually used."""
        return self.threads if self.threads is not None else usable_cores()

    def to_dict(self) -> dict:
        """JSON-friendly dict, with the effective warm-up and thread count."""
        d = asdict(self)
        d["sizes"] = [list(s) for s in self.sizes]
        d["effective_warmup"] = self.effective_warmup
        d["effective_threads"] = self.effective_threads
        d["matrix"] = self.matrix.name
        return d
