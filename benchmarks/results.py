"""Benchmark rows, the ratios against VGG computed from their raw samples, and the JSON they are saved as.

Ratios are taken against the strongest fp32 baseline measured, per metric: within each (device, size, batch)
group, "× faster" is against the **fastest** fp32 VGG-19 row with uncached target features and "× less memory"
against the **leanest** one (likewise VGG-11), whichever runtimes they ran on. ``time = median(reference
samples) / median(row samples)``, ``memory = reference peak / row peak``, and ``macs = reference work MACs /
row work MACs`` is the ratio the arithmetic alone predicts. Reduced-precision VGG rows (``torch-bf16``) get
ratios against the fp32 reference too, so a reduced-precision PGN can be compared with a reduced-precision VGG
by dividing the two."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SCHEMA = "pgn-bench/1"
#: Rows whose peak memory is below this many MiB get no memory ratio (it would be noise divided by noise).
MIN_MEMORY_MB = 0.05
REFERENCES = {"vgg19": "VGG-19", "vgg11": "VGG-11"}
STATUSES = ("ok", "unavailable", "not-applicable", "skipped", "failed")


@dataclass
class Row:
    """One model on one runtime at one size and batch: measured (``status == "ok"``) or the reason it is not."""

    model: str
    display: str
    kind: str  #: ``teacher`` or ``pgn``
    runtime: str
    family: str
    precision: str
    device: str
    size: list[int]  #: [H, W]
    batch: int
    status: str  #: one of :data:`STATUSES`
    reason: str | None = None
    target_features: str | None = None  #: teachers: ``cached`` or ``recomputed``
    samples_ms: list[float] = field(default_factory=list)  #: raw per-call times (wall clock or CUDA events)
    cpu_samples_ms: list[float] = field(default_factory=list)  #: process CPU time of each call (all threads)
    cpu_utilization: float | None = None  #: Σ CPU time / (Σ wall time × threads): ≈ 1 on an idle machine
    timer: str | None = None
    warmup: int | None = None
    time_ms: dict | None = None  #: :class:`benchmarks.measure.TimingStats` as a dict
    throughput_per_s: float | None = None  #: gradients (image pairs) per second, from the median
    memory_mb: float | None = None  #: peak working memory above the loaded model
    memory: dict | None = None  #: :class:`benchmarks.measure.MemoryReading` as a dict
    params: int | None = None
    paper_macs: int | None = None  #: Table 6 convention, one image pair
    work_macs: int | None = None  #: executed multiply-adds for the whole batch
    gflops: float | None = None  #: 2 × work MACs / median time
    artifact_mb: float | None = None
    accuracy: dict | None = None
    runtime_info: dict | None = None
    threads: dict | None = None
    ratios: dict = field(default_factory=dict)  #: {"vgg19": {"time", "memory", "macs", "reference"}, "vgg11": …}

    @property
    def ok(self) -> bool:
        """Measured successfully."""
        return self.status == "ok"

    def median_ms(self) -> float:
        """Median of the raw samples (ms)."""
        return float(np.median(self.samples_ms))

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


def _group_key(row: Row) -> tuple:
    return (row.device, tuple(row.size), row.batch)


def reference_rows(rows: list[Row], metric: str = "time") -> dict[tuple, dict[str, Row]]:
    """Per (device, size, batch): the fp32 uncached VGG-19 and VGG-11 rows that are fastest (``metric="time"``)
    or use the least memory (``metric="memory"``)."""
    def key(row: Row) -> float:
        return row.median_ms() if metric == "time" else row.memory_mb

    refs: dict[tuple, dict[str, Row]] = {}
    for row in rows:
        if not (row.ok and row.model in REFERENCES and row.precision == "fp32" and row.samples_ms):
            continue
        if metric == "memory" and row.memory_mb is None:
            continue
        group = refs.setdefault(_group_key(row), {})
        best = group.get(row.model)
        if best is None or key(row) < key(best):
            group[row.model] = row
    return refs


def attach_ratios(rows: list[Row]) -> list[Row]:
    """Fill ``row.ratios`` of every measured row against the VGG references (see module docs); returns ``rows``."""
    time_refs, memory_refs = reference_rows(rows, "time"), reference_rows(rows, "memory")
    for row in rows:
        row.ratios = {}
        if not row.ok or not row.samples_ms:
            continue
        group = _group_key(row)
        for name, ref in time_refs.get(group, {}).items():
            ratio = {"reference": f"{ref.model}/{ref.runtime}", "time": ref.median_ms() / row.median_ms(),
                     "memory_reference": None, "memory": None, "macs": None}
            mem_ref = memory_refs.get(group, {}).get(name)
            if mem_ref is not None and row.memory_mb is not None and row.memory_mb >= MIN_MEMORY_MB:
                ratio["memory_reference"] = f"{mem_ref.model}/{mem_ref.runtime}"
                ratio["memory"] = mem_ref.memory_mb / row.memory_mb
            if ref.work_macs and row.work_macs:
                ratio["macs"] = ref.work_macs / row.work_macs
            row.ratios[name] = ratio
    return rows


@dataclass
class BenchmarkResult:
    """A whole run: its configuration, the machine, and every row."""

    config: dict
    environment: dict
    rows: list[Row]
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        """JSON-friendly dict: ``schema``, ``config``, ``environment``, ``rows``."""
        return {"schema": self.schema, "config": self.config, "environment": self.environment, "rows": [r.to_dict() for r in self.rows]}

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (parents created); returns the path."""
        from pgn.files import write_json

        return write_json(self.to_dict(), path, indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "BenchmarkResult":
        """Rebuild from :meth:`to_dict` output (e.g. to re-plot a saved run); a one-line error for anything else."""
        from pgn.errors import PGNError, first_line

        if not isinstance(d, dict):
            raise PGNError(f"not a {SCHEMA} result: a JSON {type(d).__name__}, where pgn-bench --json writes an object")
        if d.get("schema") != SCHEMA:
            raise PGNError(f"not a {SCHEMA} result (schema {d.get('schema')!r})")
        try:
            rows = [Row(**r) for r in d["rows"]]
            return cls(config=dict(d["config"]), environment=dict(d["environment"]), rows=rows, schema=d["schema"])
        except (KeyError, TypeError, ValueError) as e:
            raise PGNError(f"a damaged {SCHEMA} result ({type(e).__name__}: {first_line(e)}): re-run the measurement") from None
