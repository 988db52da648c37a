"""Saving and loading PGN checkpoints: our format and the authors' released formats (versions 0, 1, 2).

Our format is a dict ``{"format": "pgn-toolkit", "format_version": 1, "config": PGNConfig.to_dict(),
"state_dict": backbone state dict, "meta": {...}}``, written atomically (temp file + rename) and read with
``torch.load(weights_only=True)``, so a checkpoint can never run code.

The authors' files (spec §8.2) hold only the backbone's state dict plus its constructor arguments:

* version 2: ``state_dict``, ``backbone_type``, ``backbone_params``, ``backbone_to_grad_type``,
  ``backbone_to_grad_params``, ``version``;
* version 1: ``state_dict``, ``params`` (backbone), ``version``; the head comes from the preset or overrides;
* version 0: a flat dict of tensors (the state dict) and backbone parameters, plus ``grad_scale``; a UNet whose
  stored grad_scale is exactly 1e-3 gets 0.048 (the authors' legacy rule).

Their parameter names may differ from ours, so weights are matched by name where names agree and otherwise
module by module in order, every tensor's shape checked; anything that does not fit is a clear error.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .backbones import BACKBONES
from .constants import GRAD_SCALE_RESNET, GRAD_SCALE_UNET, LEGACY_UNET_GRAD_SCALE
from .errors import PGNError
from .heads import HeadConfig
from .images import check_value_space
from .model import PAPER_BACKBONES, PGN, PGNConfig, apply_overrides, preset_config

FORMAT_NAME = "pgn-toolkit"
FORMAT_VERSION = 1

#: The authors' released checkpoints (paper models). Google Drive cannot be fetched non-interactively; download
#: by hand and place the file at :func:`paper_checkpoint_path`.
PAPER_CHECKPOINT_URLS: dict[str, str] = {
    "resnet4": "https://drive.google.com/file/d/1rQfI4yPi6yAGL90g2n3BVLyy4RIz4S4n/view",
    "resnet6": "https://drive.google.com/file/d/1Xua7rdBhMwus4dX0a0OPjh7M-3xtwIoB/view",
    "resnet8": "https://drive.google.com/file/d/16qw4VcK33l7ZSqVh2EQsMdZaeDKgo5JP/view",
    "unet": "https://drive.google.com/file/d/1ywBOqEo3DO7-TyA4pYC2N-Y6TDi7QKev/view",
}


def cache_dir() -> Path:
    """Where the toolkit looks for downloaded weights: ``$PGN_HOME`` or ``~/.cache/pgn-toolkit``."""
    return Path(os.environ.get("PGN_HOME", Path.home() / ".cache" / "pgn-toolkit"))


def paper_checkpoint_path(preset: str) -> Path:
    """Local path of the authors' released checkpoint for ``preset``; a clear error if it is not there."""
    base = preset.split("-")[0]
    if base not in PAPER_CHECKPOINT_URLS or base != preset:
        raise PGNError(f"no released checkpoint for {preset!r}: the authors released {', '.join(PAPER_CHECKPOINT_URLS)}")
    path = cache_dir() / "paper" / f"{base}.pth"
    if not path.is_file():
        raise PGNError(
            f"released {base} checkpoint not found at {path}: download it from {PAPER_CHECKPOINT_URLS[base]} "
            f"and save it there (or pass the file's path as weights=)"
        )
    return path


# --------------------------------------------------------------------------------------------------------
# Writing


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the target folder, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save(model: PGN, path: str | Path, *, meta: dict | None = None, value_space: str | None = None) -> Path:
    """Save a PGN (config + backbone weights + version) atomically; returns the path.

    Args:
        model: the PGN (DDP- or compile-wrapped modules are unwrapped).
        path: target file, conventionally ``*.pt``.
        meta: extra JSON-like information stored under ``"meta"`` (training step, data, teacher weights, …).
        value_space: store the config with this value space instead of the model's (the weights are the same
            in both; e.g. a PGN trained in ``imagenet`` space saved for ``unit``-space users).
    """
    from . import __version__

    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, PGN):
        raise PGNError(f"save() expects a pgn.PGN, got {type(model).__name__}")
    obj = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": dict(model.config.to_dict(), value_space=check_value_space(value_space or model.value_space)),
        "state_dict": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
        "meta": {"pgn_toolkit_version": __version__, "torch_version": str(torch.__version__), **(meta or {})},
    }
    return atomic_save(obj, path)


# --------------------------------------------------------------------------------------------------------
# Reading


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing, truncated or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise PGNError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise PGNError(
                f"refusing to load {path}: it contains Python objects beyond tensors and plain data, which could "
                f"run code; re-save it as a state dict or a pgn-toolkit checkpoint"
            ) from None
        raise PGNError(f"{path} is not a valid checkpoint ({first or 'unpickling failed'}); is the file complete?") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, io.UnsupportedOperation) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise PGNError(f"{path} is not a readable checkpoint (truncated or corrupted? {first[:160]})") from None


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _modules(sd: dict[str, torch.Tensor]) -> "OrderedDict[str, list[tuple[str, tuple]]]":
    groups: OrderedDict[str, list[tuple[str, tuple]]] = OrderedDict()
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        groups.setdefault(prefix, []).append((leaf, tuple(value.shape)))
    return groups


def match_state_dict(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to the keys of ``target``, checking every shape.

    Exact key matches are used when the key sets agree. Otherwise modules are paired in order, each with the
    first unused module of the other file whose parameter names and shapes are identical (so the authors'
    naming never matters, only the architecture). Raises :class:`PGNError` naming the first module that fits
    nowhere.
    """
    source = _strip_prefix({k: v for k, v in source.items() if isinstance(v, torch.Tensor)})
    core = lambda sd: {k for k in sd if not k.endswith("num_batches_tracked")}  # noqa: E731
    if core(source) == core(target):
        for k in core(target):
            if tuple(source[k].shape) != tuple(target[k].shape):
                raise PGNError(f"checkpoint tensor {k} has shape {tuple(source[k].shape)}, expected {tuple(target[k].shape)}")
        return {k: source.get(k, target[k]) for k in target}

    ours, theirs = _modules(target), _modules(source)
    n_ours = sum(len(v) for v in ours.values())
    n_theirs = sum(len(v) for v in theirs.values())
    if n_ours != n_theirs:
        raise PGNError(
            f"checkpoint has {n_theirs} weight tensors but this architecture has {n_ours}: it was saved for a "
            f"different backbone (check the preset, e.g. the number of residual blocks)"
        )
    used: set[str] = set()
    pairs: dict[str, str] = {}
    their_items = list(theirs.items())
    for prefix, sig in ours.items():
        for tprefix, tsig in their_items:
            if tprefix not in used and [s for _, s in tsig] == [s for _, s in sig]:
                used.add(tprefix)
                pairs[prefix] = tprefix
                break
        else:
            shapes = ", ".join(f"{leaf}{list(s)}" for leaf, s in sig)
            raise PGNError(f"checkpoint has no module matching {prefix or 'root'} ({shapes}): it was saved for a different architecture")
    out: dict[str, torch.Tensor] = {}
    for key, value in target.items():
        prefix, _, leaf = key.rpartition(".")
        their_prefix = pairs.get(prefix)
        their_key = f"{their_prefix}.{leaf}" if their_prefix else leaf
        if leaf == "num_batches_tracked":
            out[key] = source.get(their_key, value)
            continue
        ours_leaves = [lf for lf, _ in ours[prefix]]
        their_leaf = theirs[their_prefix][ours_leaves.index(leaf)][0]
        out[key] = source[f"{their_prefix}.{their_leaf}" if their_prefix else their_leaf]
    return out


_AUTHORS_RESNET_KEYS = {"down_channels": "down_channels", "up_channels": "up_channels", "num_blocks": "num_blocks", "output_nc": "out_channels"}
_AUTHORS_UNET_KEYS = {
    "block_type": "block_type",
    "conv_type": "conv_type",
    "norm_type": "norm_type",
    "down_channels": "down_channels",
    "up_channels": "up_channels",
    "predict_value": "predict_value",
    "out_channels": "out_channels",
}


def _authors_backbone_params(kind: str, params: dict) -> dict:
    names = _AUTHORS_RESNET_KEYS if kind == "resnet" else _AUTHORS_UNET_KEYS
    out = {}
    for key, value in params.items():
        if key in names:
            out[names[key]] = list(value) if isinstance(value, (tuple, list)) else value
        else:
            warnings.warn(f"ignoring unknown {kind} backbone parameter {key!r} in the authors' checkpoint", stacklevel=3)
    out.pop("out_channels", None)  # decided by the head
    return out


def _authors_head(kind: str, params: dict) -> HeadConfig:
    proxy_type = params.get("type", "sigmoid")
    grad_type = params.get("grad_type", "mse")
    if grad_type not in ("mse", "l1", "logcosh"):
        raise PGNError(f"the checkpoint's grad_type {grad_type!r} is not supported (supported: mse, l1, logcosh)")
    head_kind = {
        ("proxy", "sigmoid"): "constrained",
        ("proxy", "raw"): "proxy",
        ("direct", "raw"): "direct",
        ("direct", "sigmoid"): "hybrid",
        ("proxy", "warped_target"): "warped",
    }.get((kind, proxy_type))
    if head_kind is None:
        raise PGNError(f"unsupported head in checkpoint: backbone_to_grad_type={kind!r} with proxy type {proxy_type!r}")
    kw: dict[str, Any] = {"kind": head_kind, "grad_type": grad_type}
    if "grad_scale" in params:
        kw["grad_scale"] = float(params["grad_scale"])
    if "out_scale" in params:
        kw["out_scale"] = float(params["out_scale"])
    sub = params.get(proxy_type) or {}
    if proxy_type == "sigmoid" and "scale" in sub:
        kw["beta"] = float(sub["scale"])
    if proxy_type == "warped_target":
        for theirs, ours in (("scale", "warp_scale"), ("additive", "warp_additive"), ("downscale_by", "warp_downscale_by"), ("additive_scale", "warp_additive_scale")):
            if theirs in sub:
                kw[ours] = sub[theirs]
    return HeadConfig(**kw)


def _default_head(backbone: str) -> HeadConfig:
    return HeadConfig(grad_scale=GRAD_SCALE_UNET if backbone == "unet" else GRAD_SCALE_RESNET)


@dataclass(frozen=True)
class ParsedCheckpoint:
    """What a checkpoint file holds, whatever its format."""

    format: str  #: ``pgn-toolkit``, ``authors-v2``, ``authors-v1`` or ``authors-v0``
    backbone: str
    backbone_params: dict
    head: HeadConfig | None  #: None where the file does not store the head (authors' version 1)
    state_dict: dict
    value_space: str = "unit"
    preset: str | None = None


def _guess_backbone(params: dict, state: dict[str, torch.Tensor], preset: str | None) -> str:
    """The backbone type of an authors' version-0/1 file: from the preset, the parameter names, or the shapes."""
    if preset is not None:
        return preset_config(preset).backbone
    if any(k in params for k in ("block_type", "conv_type", "norm_type", "predict_value")):
        return "unet"
    for kind, p, _ in PAPER_BACKBONES.values():
        model = PGN(PGNConfig(kind, dict(p)))
        try:
            match_state_dict(model.backbone.state_dict(), state)
            return kind
        except PGNError:
            continue
    raise PGNError("cannot tell which backbone this checkpoint holds: pass preset= (e.g. 'resnet4' or 'unet')")


def parse_checkpoint(obj: Any, *, preset: str | None = None) -> ParsedCheckpoint:
    """Read the configuration and weights out of a loaded checkpoint in any supported format."""
    if not isinstance(obj, dict):
        raise PGNError(f"not a PGN checkpoint: expected a dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT_NAME:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise PGNError(f"checkpoint format version {obj['format_version']} is newer than this pgn-toolkit supports; upgrade pgn-toolkit")
        try:
            c = PGNConfig.from_dict(obj["config"])
            state = obj["state_dict"]
        except (KeyError, TypeError) as e:
            raise PGNError(f"broken pgn-toolkit checkpoint: bad or missing config ({e})") from None
        return ParsedCheckpoint(FORMAT_NAME, c.backbone, c.backbone_params, c.head, state, c.value_space, c.preset)
    version = obj.get("version")
    if version == 2:
        try:
            kind = obj["backbone_type"]
            if kind not in BACKBONES:
                raise PGNError(f"unknown backbone_type {kind!r} in checkpoint")
            params = _authors_backbone_params(kind, obj.get("backbone_params", {}))
            head = _authors_head(obj.get("backbone_to_grad_type", "proxy"), obj.get("backbone_to_grad_params", {}))
            return ParsedCheckpoint("authors-v2", kind, params, head, obj["state_dict"])
        except KeyError as e:
            raise PGNError(f"broken authors' version-2 checkpoint: missing key {e}") from None
    if version == 1:
        if "state_dict" not in obj:
            raise PGNError("broken authors' version-1 checkpoint: no state_dict")
        params = dict(obj.get("params", {}))
        kind = _guess_backbone(params, obj["state_dict"], preset)
        return ParsedCheckpoint("authors-v1", kind, _authors_backbone_params(kind, params), None, obj["state_dict"])
    if version is None and "state_dict" not in obj and "config" not in obj:
        state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not state:
            raise PGNError("not a PGN checkpoint: no tensors found")
        params = {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
        grad_scale = params.pop("grad_scale", None)
        kind = _guess_backbone(params, state, preset)
        head = None
        if grad_scale is not None:
            grad_scale = float(grad_scale)
            if kind == "unet" and grad_scale == LEGACY_UNET_GRAD_SCALE:
                warnings.warn("legacy UNet checkpoint: grad_scale 1e-3 (batch-mean era) rewritten to 0.048", stacklevel=3)
                grad_scale = GRAD_SCALE_UNET
            head = HeadConfig(grad_scale=grad_scale)
        return ParsedCheckpoint("authors-v0", kind, _authors_backbone_params(kind, params), head or _default_head(kind), state)
    if "state_dict" in obj:
        raise PGNError("checkpoint has a state_dict but no usable config: load it with pgn.load(path, preset=...) or re-save with pgn.save")
    raise PGNError(f"unrecognized checkpoint layout (keys: {sorted(map(str, obj))[:8]})")


def load(
    path: str | Path,
    *,
    preset: str | None = None,
    map_location: str | torch.device = "cpu",
    ignore_grad_scale_mismatch: bool = False,
    **overrides: Any,
) -> PGN:
    """Load a PGN from our checkpoint or one of the authors' released files; returns the model in eval mode.

    The file decides the architecture and, where it stores one, the head. ``preset`` and backbone overrides are
    checks against it (a mismatch is a clear error, as in the authors' loader); head overrides may only repeat
    what the file stores, except ``grad_scale`` with ``ignore_grad_scale_mismatch=True``. ``value_space`` can
    always be chosen.

    Args:
        path: the checkpoint file.
        preset: expected preset (e.g. ``"resnet4"``); for the authors' version-1 files it also supplies the head.
        map_location: device for the loaded tensors.
        ignore_grad_scale_mismatch: let a ``grad_scale`` override win over the checkpoint's, with a warning
            (the authors' ``--pgn-ignore-grad-scale-mismatch``).
        **overrides: as in :func:`pgn.build` (``value_space``, ``grad_scale``, ``num_blocks``, …).
    """
    ck = parse_checkpoint(read_file(path, map_location), preset=preset)
    base = preset_config(preset) if preset else None
    head = ck.head or (base.head if base else _default_head(ck.backbone))
    config = PGNConfig(ck.backbone, ck.backbone_params, head, ck.value_space, preset or ck.preset)

    backbone_keys = set(BACKBONES[ck.backbone][1].__dataclass_fields__) - {"out_channels"}
    backbone_kw = {k: v for k, v in overrides.items() if k in backbone_keys and v is not None}
    other_kw = {k: v for k, v in overrides.items() if k not in backbone_keys and v is not None}
    want = apply_overrides(base or config, **backbone_kw)
    if _backbone_key(want) != _backbone_key(config):
        what = f"preset {preset!r} is" if preset else "you asked for"
        raise PGNError(f"{path} holds a {_describe(config)} backbone, but {what} a {_describe(want)}")
    if base is not None and ck.head is not None and base.head.kind != ck.head.kind:
        raise PGNError(f"{path} was trained with the {ck.head.kind!r} head, but preset {preset!r} uses {base.head.kind!r}")

    config = apply_overrides(config, **_checked_head_overrides(config, other_kw, ck.head is not None, ignore_grad_scale_mismatch, path))
    model = PGN(config)
    model.backbone.load_state_dict(match_state_dict(model.backbone.state_dict(), ck.state_dict))
    model.checkpoint_format = ck.format
    return model.to(map_location).eval()


def _backbone_key(config: PGNConfig) -> tuple:
    return config.backbone, {k: v for k, v in config.backbone_params.items() if k != "out_channels"}


def _checked_head_overrides(config: PGNConfig, overrides: dict, stored: bool, ignore_grad_scale_mismatch: bool, path) -> dict:
    """Head overrides that may apply to a loaded checkpoint; differing ones are errors where the file stores the head."""
    if not stored:
        return overrides
    current = dict(config.head.to_dict(), head=config.head.kind)
    for key, value in overrides.items():
        if key == "value_space" or key not in current or value == current[key]:
            continue
        if key == "grad_scale":
            if not ignore_grad_scale_mismatch:
                raise PGNError(
                    f"grad_scale {value} differs from the checkpoint's {config.head.grad_scale} ({path}); pass "
                    f"ignore_grad_scale_mismatch=True to use yours"
                )
            warnings.warn(f"using grad_scale {value} instead of the checkpoint's {config.head.grad_scale}", stacklevel=3)
            continue
        raise PGNError(f"{path} stores {key}={current[key]!r}; it cannot be changed to {value!r} for these weights")
    return overrides


def _describe(config: PGNConfig) -> str:
    p = config.backbone_params
    if config.backbone == "resnet":
        return f"resnet(num_blocks={p['num_blocks']}, down={p['down_channels']}, up={p['up_channels']})"
    return f"unet(down={p['down_channels']}, up={p['up_channels']}, block={p['block_type']})"
