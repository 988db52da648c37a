"""The ``manifest.json`` written beside every artifact, and the metadata stored inside artifacts.

A manifest lets a runtime rebuild everything around the graph from the file alone: the model it came from
(backbone, head, constants), the input/output contract, the precision and the fp16 gradient recipe, the
exporter and opset, software versions, the artifact's sha256, and the parity results.

The manifest of ``unet-224x224-b1-fp32.onnx`` is ``unet-224x224-b1-fp32.onnx.manifest.json`` in the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pgn
from pgn.files import write_text
from pgn.constants import IMAGENET_MEAN, IMAGENET_STD
from pgn.errors import PGNError, first_line
from pgn.files import check_input_file

from .graph import GradientRecipe, describe_graph
from .graph_options import resolve_graph_options
from .options import ExportOptions

MANIFEST_FORMAT = "pgn-export-manifest"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"

FP16_RECIPE = (
    "fp16 artifacts output the residual r = phi(y_hat_n - P_n) in ImageNet-normalized space instead of the "
    "gradient, whose values (~1e-7..1e-4) underflow in fp16. Compute on the host, in fp32: "
    "grad[:, c] = r[:, c] * k * alpha / (3 * H * W) / std[c] (see 'gradient'). For the default MSE heads "
    "(phi = identity, k = 2) this equals alpha * 2/(3HW) * (y_hat - P) / std[c]**2: the gradient of an MSE "
    "towards P, so a trainer can also simply minimize alpha * mean((y_hat_n - P_n)**2) with P detached."
)


def manifest_path(artifact: str | Path) -> Path:
    """Where the manifest of ``artifact`` lives: ``<artifact name>.manifest.json`` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def artifact_stem(model: "pgn.PGN", options: ExportOptions) -> str:
    """File stem naming what an artifact is, e.g. ``unet-224x224-b1-fp32`` or ``resnet4-proxy-224x224-b1-fp16-dynamic``."""
    cfg = model.config
    name = cfg.preset or cfg.backbone
    base = name.split("-")[0]
    if cfg.head.kind != "constrained" and cfg.head.kind not in name:
        name = f"{base}-{cfg.head.kind}"
    h, w = options.size
    stem = f"{name}-{h}x{w}-b{options.batch}-{options.precision}"
    return stem + ("-dynamic" if options.dynamic else "")


def model_description(model: "pgn.PGN", weights_source: str | None) -> dict[str, Any]:
    """Backbone, head and constants of ``model`` as plain data."""
    cfg = model.config
    if weights_source is None:
        fmt = getattr(model, "checkpoint_format", None)
        weights_source = f"loaded from a checkpoint ({fmt})" if fmt else "in-memory model (weights source not recorded)"
    return {
        "preset": cfg.preset,
        "backbone": cfg.backbone,
        "backbone_params": dict(cfg.backbone_params),
        "head": cfg.head.to_dict(),
        "source_value_space": cfg.value_space,
        "params": sum(p.numel() for p in model.parameters()),
        "size_multiple": model.size_multiple,
        "weights": weights_source,
    }


def constants(model: "pgn.PGN") -> dict[str, Any]:
    """The numbers baked into the graph."""
    head = model.config.head
    return {
        "imagenet_mean": list(IMAGENET_MEAN),
        "imagenet_std": list(IMAGENET_STD),
        "alpha": head.alpha,
        "grad_scale": head.grad_scale,
        "beta": head.beta,
        "out_scale": head.out_scale,
    }


def io_description(options: ExportOptions, output_names: tuple[str, ...]) -> dict[str, list[dict]]:
    """Names, shapes, dtypes and ranges of the graph's inputs and outputs."""
    shape: list = list(options.shape) if not options.dynamic else ["batch", 3, "height", "width"]
    inputs = [
        {"name": "y_hat", "shape": shape, "dtype": "float32", "layout": "NCHW RGB", "range": [0.0, 1.0],
         "meaning": "the generated image; the gradient is taken with respect to it"},
        {"name": "y", "shape": shape, "dtype": "float32", "layout": "NCHW RGB", "range": [0.0, 1.0],
         "meaning": "the target image"},
    ]
    meanings = {
        "proxy": "the proxy target P, in [0, 1] RGB space (the constrained head keeps it within about [-0.05, 1.06])",
        "grad": "the synthetic perceptual gradient w.r.t. the [0, 1] y_hat",
        "residual": "phi(y_hat_n - P_n) in ImageNet-normalized space; multiply on the host (see 'gradient')",
    }
    outputs = [{"name": n, "shape": shape, "dtype": "float32", "meaning": meanings[n]} for n in output_names]
    return {"inputs": inputs, "outputs": outputs}


def versions(packages: Mapping[str, Sequence[str]]) -> dict[str, str | None]:
    """Versions of the software that made (and checked) the artifact; ``None`` where not installed.

    Args:
        packages: name in the manifest → the distributions that provide it, first installed one wins (e.g.
            ``onnxruntime`` from ``onnxruntime-gpu`` or ``onnxruntime``); pgn-toolkit, Python and torch are always
            recorded.
    """
    import torch

    found: dict[str, str | None] = {
        "pgn-toolkit": pgn.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
    }
    for key, distributions in packages.items():
        found[key] = next((v for v in map(_installed_version, distributions) if v), None)
    return found


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, or of a package folder (relative paths and contents of its files, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    for rel, p in files:
        if path.is_dir():
            digest.update(rel.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def size_mb(path: str | Path) -> float:
    """Size of a file or folder in MB (10^6 bytes)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def metadata_strings(model: "pgn.PGN", options: ExportOptions, target: str, output_names: tuple[str, ...]) -> dict[str, str]:
    """Flat string metadata for an artifact's native slot (ONNX ``metadata_props``, CoreML ``user_defined_metadata``)."""
    cfg = model.config
    recipe = GradientRecipe.for_head(cfg.head)
    h, w = options.size
    return {
        "pgn.version": pgn.__version__,
        "pgn.preset": str(cfg.preset),
        "pgn.backbone": cfg.backbone,
        "pgn.backbone_params": json.dumps(cfg.backbone_params, sort_keys=True),
        "pgn.head": cfg.head.kind,
        "pgn.head_config": json.dumps(cfg.head.to_dict(), sort_keys=True),
        "pgn.constants": json.dumps(constants(model), sort_keys=True),
        "pgn.inputs": "y_hat, y: (N, 3, H, W) float32 RGB in [0, 1]; ImageNet normalization is inside the graph",
        "pgn.input_range": "[0, 1]",
        "pgn.outputs": ", ".join(output_names),
        "pgn.precision": str(options.precision),
        "pgn.input_shape": "dynamic (batch, 3, height, width)" if options.dynamic else f"{options.batch}x3x{h}x{w}",
        "pgn.target": target,
        "pgn.gradient": json.dumps(recipe.to_dict(), sort_keys=True),
        "pgn.fp16_recipe": FP16_RECIPE if "residual" in output_names else "",
    }


def build_manifest(
    *,
    model: "pgn.PGN",
    options: ExportOptions,
    target: str,
    artifact: Path,
    output_names: tuple[str, ...],
    exporter: dict[str, Any],
    target_info: dict[str, Any],
    parity: dict[str, Any],
    status: str,
    weights_source: str | None,
    shape_range: dict | None,
    packages: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """Assemble the manifest of one artifact (written by :func:`write_manifest`); ``packages`` are the
    distributions whose versions it records (see :func:`versions`)."""
    recipe = GradientRecipe.for_head(model.config.head)
    gradient = dict(recipe.to_dict(), output=output_names[1])
    if output_names[1] == "residual":
        gradient["recipe"] = FP16_RECIPE
        if not options.dynamic:
            gradient["host_scale_at_export_size"] = recipe.scale(*options.size).reshape(3).tolist()
    else:
        gradient["recipe"] = "the graph outputs the gradient itself (scale applied in fp32 inside the graph)"
    return {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": target,
        "artifact": artifact.name,
        "sha256": sha256_of(artifact),
        "size_mb": round(size_mb(artifact), 3),
        "status": status,
        "model": model_description(model, weights_source),
        "constants": constants(model),
        **io_description(options, output_names),
        "precision": options.precision,
        "dynamic": options.dynamic,
        "export_size": list(options.size),
        "export_batch": options.batch,
        "shape_range": shape_range,
        "gradient": gradient,
        "graph": describe_graph(model.backbone, resolve_graph_options(options.graph_options),
                                None if options.dynamic else options.size),
        "exporter": exporter,
        "target_info": target_info,
        "versions": versions(packages),
        "parity": parity,
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    """Write a manifest as indented JSON, atomically (temporary file beside it, then rename)."""
    return write_text(path, json.dumps(manifest, indent=2, default=_json_default) + "\n")


def read_manifest(artifact: str | Path, check: Callable[[dict[str, Any], Path], None] | None = None) -> dict[str, Any]:
    """The manifest beside ``artifact``, checked for the fields a runtime relies on; a one-line error if it is
    missing, not a regular file, not a JSON object, not ours, or inconsistent.

    ``check(manifest, path)`` checks the fields; the default (:func:`check_manifest`) is that of a PGN artifact, and
    other kinds of artifact (the fitting-step program) pass their own.
    """
    path = manifest_path(artifact)
    if not os.path.lexists(path):
        raise PGNError(f"no manifest beside {artifact} (expected {path.name}): export the artifact with pgn-export, which writes one")
    path = check_input_file(path, "manifest")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PGNError(f"cannot read manifest {path}: {first_line(e)}") from None
    if not isinstance(manifest, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(type(manifest), "null")
        raise PGNError(f"{path} is not a pgn-export manifest: it holds {kind}, not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise PGNError(f"{path} is not a pgn-export manifest")
    (check or check_manifest)(manifest, path)
    return manifest


def check_manifest(manifest: dict[str, Any], where: str | Path) -> None:
    """Raise a one-line :class:`PGNError` unless ``manifest`` has the fields every runtime relies on, with the
    right types, and input/output shapes that agree with its export size, batch and ``dynamic`` flag."""

    def bad(what: str) -> PGNError:
        return PGNError(f"{where} is not a usable pgn-export manifest: {what}; re-export the artifact")

    for key, kind in (("target", str), ("sha256", str), ("inputs", list), ("outputs", list), ("gradient", dict),
                      ("model", dict), ("dynamic", bool), ("export_size", list), ("export_batch", int)):
        if not isinstance(manifest.get(key), kind):
            raise bad(f"{key!r} is missing or not a JSON {kind.__name__}")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"]):
        raise bad(f"sha256 {manifest['sha256'][:80]!r} is not a sha256 digest")
    if not isinstance(manifest["model"].get("size_multiple"), int) or isinstance(manifest["model"]["size_multiple"], bool):
        raise bad("model.size_multiple is missing")
    try:
        GradientRecipe.from_dict(manifest["gradient"])
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"its gradient recipe is incomplete ({first_line(e)})") from None
    size, batch = manifest["export_size"], manifest["export_batch"]
    expected = ["batch", 3, "height", "width"] if manifest["dynamic"] else [batch, 3, *size]
    names = {"inputs": ("y_hat", "y"), "outputs": ("proxy",)}
    for side in ("inputs", "outputs"):
        entries = manifest[side]
        if len(entries) != 2 or not all(isinstance(e, dict) for e in entries):
            raise bad(f"it must list two {side}")
        if names[side] != tuple(e.get("name") for e in entries)[: len(names[side])]:
            raise bad(f"its {side} must be named {', '.join(names[side])}…")
        for entry in entries:
            if entry.get("shape") != expected:
                raise bad(f"{side[:-1]} {entry.get('name')!r} has shape {entry.get('shape')}, but an artifact "
                          f"{'with dynamic shapes' if manifest['dynamic'] else f'exported at batch {batch}, size {size}'} "
                          f"takes {expected}")
    if manifest["outputs"][1].get("name") not in ("grad", "residual"):
        raise bad("its second output must be grad or residual")


def check_artifact(artifact: str | Path, manifest: dict[str, Any]) -> None:
    """Raise a one-line :class:`PGNError` unless ``artifact`` (file or package folder) hashes to the manifest's
    sha256: what a runtime loads is exactly what was exported and verified, for every target."""
    digest = sha256_of(artifact)
    if digest != manifest.get("sha256"):
        raise PGNError(f"{Path(artifact).name} does not match its manifest (sha256 {digest[:12]}…, manifest "
                       f"{str(manifest.get('sha256'))[:12]}…): the artifact or its manifest was changed; re-export it")


def check_input_shapes(artifact: str | Path, manifest: dict[str, Any], shapes: Sequence[Sequence] | None) -> None:
    """Raise a one-line :class:`PGNError` if the input shapes an artifact declares (``None``: the runtime cannot
    tell) differ from those its manifest claims; symbolic dimensions match any claimed dynamic dimension."""
    if shapes is None:
        return
    claimed = [entry["shape"] for entry in manifest["inputs"]]
    for got, want in zip(shapes, claimed):
        got = list(got)
        fits = len(got) == len(want) and all(
            isinstance(g, str) or g is None or isinstance(w, str) or g == w for g, w in zip(got, want))
        if not fits or (manifest["dynamic"] is False and any(isinstance(g, str) or g is None for g in got)):
            raise PGNError(f"{Path(artifact).name} takes inputs of shape {got} but its manifest claims {want}: "
                           f"the manifest does not belong to this artifact; re-export it")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
