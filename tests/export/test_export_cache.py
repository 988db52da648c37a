"""The artifact cache (``pgn.export.cache``): found only with its exact key, checked against the manifest's sha256,
rebuilt (never used) when damaged or made by other software, and no cache at all where it cannot be written."""

import json

import pytest

from pgn.export import cache as cache_mod
from pgn.export.cache import ENTRY_FILE, ArtifactCache, default_cache_dir
from pgn.export.manifest import MANIFEST_FORMAT, manifest_path, sha256_of

KEY = {"model": "resnet4", "target": "onnx", "precision": "fp32", "size": [32, 32], "batch": 1}


def make_artifact(folder, data=b"graph bytes " * 100, name="resnet4-32x32-b1-fp32.onnx"):
    """A stand-in artifact with a pgn-export manifest holding its sha256 (no exporter needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / name
    artifact.write_bytes(data)
    manifest_path(artifact).write_text(json.dumps({"format": MANIFEST_FORMAT, "target": "onnx", "sha256": sha256_of(artifact)}))
    return artifact


@pytest.fixture
def cache(tmp_path):
    cache, why = ArtifactCache.open(tmp_path / "cache")
    assert why is None
    return cache


def test_a_stored_artifact_is_found_with_its_key_only(cache, tmp_path):
    source = make_artifact(tmp_path / "export")
    assert cache.lookup(KEY) is None
    stored = cache.store(KEY, source)
    assert stored.parent.parent == cache.root and stored.read_bytes() == source.read_bytes()
    assert manifest_path(stored).is_file()
    assert cache.lookup(dict(KEY)) == stored
    for change in ({"size": [64, 64]}, {"precision": "int8"}, {"model": "unet"}, {"graph_options": "plain"}):
        assert cache.lookup({**KEY, **change}) is None
    assert cache.lookup(KEY) == stored  # a miss on another key leaves this entry alone


def _truncate(artifact):
    artifact.write_bytes(artifact.read_bytes()[:10])


def _flip_a_byte(artifact):
    data = bytearray(artifact.read_bytes())
    data[5] ^= 0xFF
    artifact.write_bytes(bytes(data))


def _wrong_manifest_sha(artifact):
    manifest = json.loads(manifest_path(artifact).read_text())
    manifest_path(artifact).write_text(json.dumps({**manifest, "sha256": "0" * 64}))


def _no_manifest(artifact):
    manifest_path(artifact).unlink()


def _no_artifact(artifact):
    artifact.unlink()


def _entry_of_another_key(artifact):
    entry = artifact.parent / ENTRY_FILE
    data = json.loads(entry.read_text())
    data["key"]["size"] = [64, 64]
    entry.write_text(json.dumps(data))


def _garbled_entry(artifact):
    (artifact.parent / ENTRY_FILE).write_text("{not json")


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _wrong_manifest_sha, _no_manifest, _no_artifact, _entry_of_another_key,
                                    _garbled_entry])
def test_a_damaged_entry_is_deleted_and_rebuilt_never_used(cache, tmp_path, damage):
    source = make_artifact(tmp_path / "export")
    stored = cache.store(KEY, source)
    damage(stored)
    assert cache.lookup(KEY) is None
    assert not stored.parent.exists()  # deleted, so the next store rebuilds it
    again = cache.store(KEY, source)
    assert cache.lookup(KEY) == again and again.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("package", ["pgn-toolkit", "torch", "onnxruntime", "executorch"])
def test_an_entry_made_by_another_toolkit_or_runtime_version_is_rebuilt(cache, tmp_path, monkeypatch, package):
    stored = cache.store(KEY, make_artifact(tmp_path / "export"))
    versions = cache_mod.software_versions()
    assert package in versions
    monkeypatch.setattr(cache_mod, "software_versions", lambda: {**versions, package: "9.9.9"})
    assert cache.lookup(KEY) is None and not stored.parent.exists()
    monkeypatch.setattr(cache_mod, "software_versions", lambda: versions)
    assert cache.lookup(KEY) is None  # the old entry is gone, not kept beside the new one


def test_the_toolkit_fingerprint_follows_its_sources(monkeypatch, tmp_path):
    import pgn

    cache_mod.toolkit_fingerprint.cache_clear()
    before = cache_mod.toolkit_fingerprint()
    assert before.startswith(pgn.__version__ + "+src.")
    folder = tmp_path / "pgn"
    folder.mkdir()
    (folder / "extra.py").write_text("x = 1\n")
    monkeypatch.setattr(pgn, "__path__", [*pgn.__path__, str(folder)])
    cache_mod.toolkit_fingerprint.cache_clear()
    try:
        assert cache_mod.toolkit_fingerprint() != before
    finally:
        monkeypatch.undo()
        cache_mod.toolkit_fingerprint.cache_clear()


def test_a_folder_that_cannot_be_written_is_no_cache(read_only_dir):
    cache, why = ArtifactCache.open(read_only_dir / "bench")
    assert cache is None and str(read_only_dir / "bench") in why and "\n" not in why
    cache, why = ArtifactCache.open(read_only_dir)
    assert cache is None and why


def test_clear_removes_the_entries_and_nothing_else(cache, tmp_path):
    cache.store(KEY, make_artifact(tmp_path / "a"))
    cache.store({**KEY, "model": "unet"}, make_artifact(tmp_path / "b"))
    (cache.root / "notes.txt").write_text("mine")
    (cache.root / "my-folder").mkdir()
    assert cache.clear() == 2
    assert sorted(p.name for p in cache.root.iterdir()) == ["my-folder", "notes.txt"]
    assert cache.lookup(KEY) is None


def test_default_folder_is_pgn_home_then_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir("bench") == tmp_path / "home" / "bench"
    monkeypatch.delenv("PGN_HOME")
    assert default_cache_dir("bench") == tmp_path / "xdg" / "pgn-toolkit" / "bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_cache_dir("bench") == tmp_path / "user" / ".cache" / "pgn-toolkit" / "bench"
