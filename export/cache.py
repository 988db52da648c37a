"""A folder of exported artifacts kept between runs, each keyed by everything that determines it.

An entry is a folder ``<root>/<slot>/`` holding the artifact, its manifest (``<artifact>.manifest.json``, written
by :func:`export.export`) and ``entry.json`` with the full key. The slot is a digest of the key *without* the
software versions, so an entry made by another toolkit or runtime version sits in the same slot and is replaced
(rebuilt), never used, and entries do not pile up across upgrades.

A lookup trusts an entry only if its ``entry.json`` holds exactly the requested key (toolkit version and
source digest, torch and every export runtime's version included: :func:`software_versions`) and the artifact's
sha256 equals its manifest's. Anything else (a truncated file, an edited one, a half-written entry, another
version) is deleted and reported as a miss, so the caller exports again.

The default root is :func:`default_cache_dir`: ``$PGN_HOME/<name>``, else ``$XDG_CACHE_HOME/pgn-toolkit/<name>``,
else ``~/.cache/pgn-toolkit/<name>`` (the folder :func:`pgn.checkpoint.cache_dir` also uses for weights).

Example::

    cache = ArtifactCache.open(default_cache_dir("bench"))   # None (and a warning) if it cannot be written
    key = {"target": "onnx", "model": "resnet4", "weights": "seeded-random:0", "size": [128, 128], ...}
    artifact = cache.lookup(key) or cache.store(key, export(...)[0].artifact)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

ENTRY_FILE = "entry.json"
ENTRY_FORMAT = "pgn-artifact-cache/1"
_TMP_PREFIX = ".tmp-"


def default_cache_dir(name: str) -> Path:
    """``<toolkit cache folder>/<name>``: see :func:`pgn.checkpoint.cache_dir`."""
    from pgn.checkpoint import cache_dir

    return cache_dir() / name


#: Modules of ``pgn.benchmarks`` that shape an artifact (the task it runs, the model it builds); the rest
#: of the benchmark (timing, tables) does not.
BENCHMARK_SOURCES = ("worker.py", "models.py", "runtimes.py")


@lru_cache(maxsize=1)
def toolkit_fingerprint() -> str:
    """The toolkit's version plus a digest of the Python sources that make an artifact (``pgn``, ``pgn.export`` and
    :data:`BENCHMARK_SOURCES`), so that a changed exporter in a development checkout never reuses an artifact made
    by the old code."""
    import pgn
    import pgn.benchmarks
    import pgn.export

    files = [(f"pgn/{p.relative_to(f).as_posix()}", p) for f in map(Path, pgn.__path__) for p in f.rglob("*.py")]
    files += [(f"export/{p.relative_to(f).as_posix()}", p) for f in map(Path, pgn.export.__path__) for p in f.rglob("*.py")]
    files += [(f"benchmarks/{name}", f / name) for f in map(Path, pgn.benchmarks.__path__) for name in BENCHMARK_SOURCES
              if (f / name).is_file()]
    digest = hashlib.sha256()
    for name, path in sorted(files):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return f"{pgn.__version__}+src.{digest.hexdigest()[:16]}"


@lru_cache(maxsize=1)
def software_versions() -> dict[str, Any]:
    """What else determines an artifact besides its inputs: the toolkit (:func:`toolkit_fingerprint`), Python, the
    platform, torch and the version of every export target's packages (onnx, onnxscript, onnxruntime, executorch,
    torchao, coremltools, tensorrt; ``None`` where not installed)."""
    from .formats import packages
    from .manifest import versions

    return {**versions(packages()), "pgn-toolkit": toolkit_fingerprint()}


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ArtifactCache:
    """Exported artifacts under ``root`` (see the module docs). Use :meth:`open`, which checks it can be written."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> tuple["ArtifactCache | None", str | None]:
        """The cache at ``root``, created if missing; ``(None, why)`` if it cannot be written there."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=_TMP_PREFIX):
                pass
        except OSError as e:
            return None, f"{root}: {e.strerror or e}"
        return cls(root), None

    def full_key(self, key: dict[str, Any]) -> dict[str, Any]:
        """``key`` with the software versions added (what an entry must match exactly)."""
        return {**key, "versions": software_versions()}

    def slot(self, key: dict[str, Any]) -> Path:
        """The entry folder of ``key`` (its digest without the versions)."""
        return self.root / _digest(key)[:32]

    def lookup(self, key: dict[str, Any]) -> Path | None:
        """The cached artifact for ``key``, checked (key, manifest sha256); None on a miss, after deleting a stale or
        damaged entry."""
        from .manifest import manifest_path, sha256_of

        folder = self.slot(key)
        if not folder.exists():
            return None
        try:
            entry = json.loads((folder / ENTRY_FILE).read_text())
            if entry.get("format") != ENTRY_FORMAT or entry.get("key") != json.loads(json.dumps(self.full_key(key), default=str)):
                raise ValueError("another key (or toolkit / runtime version)")
            artifact = folder / entry["artifact"]
            if artifact.name != entry["artifact"] or not artifact.exists():
                raise ValueError("artifact missing")
            # only the hash here: the runtime that loads the artifact checks the rest of its manifest
            if sha256_of(artifact) != json.loads(manifest_path(artifact).read_text()).get("sha256"):
                raise ValueError("sha256 differs from the manifest's")
        except Exception:  # noqa: BLE001 - whatever is wrong with it, the entry is not used
            self._remove(folder)
            return None
        return artifact

    def store(self, key: dict[str, Any], artifact: str | Path) -> Path:
        """Copy ``artifact`` and its manifest into the entry of ``key``; returns the cached artifact.

        The entry is assembled in a temporary folder and renamed into place, so a crash leaves no half entry. If
        another process stored the same key meanwhile, its entry is kept (after the same checks as a lookup).

        Raises:
            OSError: the cache could not be written (the caller goes on without it).
        """
        from .manifest import manifest_path

        artifact = Path(artifact)
        folder = self.slot(key)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
        try:
            copy = shutil.copytree if artifact.is_dir() else shutil.copy2
            copy(artifact, tmp / artifact.name)
            shutil.copy2(manifest_path(artifact), manifest_path(tmp / artifact.name))
            entry = {"format": ENTRY_FORMAT, "artifact": artifact.name, "key": self.full_key(key)}
            (tmp / ENTRY_FILE).write_text(json.dumps(entry, indent=2, sort_keys=True, default=str) + "\n")
            self._remove(folder)
            try:
                os.rename(tmp, folder)
            except OSError:
                if not folder.exists():
                    raise
        finally:
            self._remove(tmp)
        cached = self.lookup(key)
        if cached is None:
            raise OSError(f"the cache entry {folder} could not be read back")
        return cached

    def clear(self) -> int:
        """Delete every entry (and leftover temporary folder) of this cache, nothing else; returns how many."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for folder in self.root.iterdir():
            if folder.is_dir() and ((folder / ENTRY_FILE).is_file() or folder.name.startswith(_TMP_PREFIX)):
                self._remove(folder)
                removed += 1
        return removed

    @staticmethod
    def _remove(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
