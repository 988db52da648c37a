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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .backbones import BACKBONES
from .constants import GRAD_SCALE_RESNET, GRAD_SCALE_UNET, LEGACY_UNET_GRAD_SCALE
from .errors import PGNError
from .heads import HeadConfig
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


def save(model: PGN, path: str | Path, *, meta: dict | None = None) -> Path:
    """Save a PGN (config + backbone weights + version) atomically; returns the path.

    Args:
        model: the PGN (an unwrapped module, not DDP or compiled).
        path: target file, conventionally ``*.pt``.
        meta: extra JSON-like information stored under ``"meta"`` (training step, data, teacher weights, …).
    """
    from . import __version__

    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, PGN):
        raise PGNError(f"save() expects a pgn.PGN, got {type(model).__name__}")
    obj = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
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


def _guess_backbone(params: dict, state: dict[str, torch.Tensor], preset: str | None) -> tuple[str, dict]:
    """For version-0 files, which carry no backbone type: infer it from the parameters or from the shapes."""
    if preset is not None:
        return preset_config(preset).backbone, {}
    if any(k in params for k in ("block_type", "conv_type", "norm_type", "predict_value")):
        return "unet", {}
    candidates = [(kind, p) for kind, p, _ in PAPER_BACKBONES.values()]
    for kind, p in candidates:
        model = PGN(PGNConfig(kind, dict(p, **_authors_backbone_params(kind, {k: v for k, v in params.items() if k in (_AUTHORS_RESNET_KEYS if kind == "resnet" else _AUTHORS_UNET_KEYS)}))))
        try:
            match_state_dict(model.backbone.state_dict(), state)
            return kind, dict(p)
        except PGNError:
            continue
    raise PGNError("cannot tell which backbone this version-0 checkpoint holds: pass preset= (e.g. 'resnet4' or 'unet')")


def parse_checkpoint(obj: Any, *, preset: str | None = None) -> tuple[PGNConfig | None, dict, HeadConfig | None, dict[str, torch.Tensor], str]:
    """Split a loaded checkpoint into (our config or None, backbone params, head or None, state dict, format).

    ``format`` is ``pgn-toolkit``, ``authors-v2``, ``authors-v1`` or ``authors-v0``.
    """
    if not isinstance(obj, dict):
        raise PGNError(f"not a PGN checkpoint: expected a dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT_NAME:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise PGNError(f"checkpoint format version {obj['format_version']} is newer than this pgn-toolkit supports; upgrade pgn-toolkit")
        try:
            config = PGNConfig.from_dict(obj["config"])
        except (KeyError, TypeError) as e:
            raise PGNError(f"broken pgn-toolkit checkpoint: bad config ({e})") from None
        return config, config.backbone_params, config.head, obj["state_dict"], FORMAT_NAME
    version = obj.get("version")
    if version == 2:
        try:
            kind = obj["backbone_type"]
            params = _authors_backbone_params(kind, obj.get("backbone_params", {}))
            head = _authors_head(obj.get("backbone_to_grad_type", "proxy"), obj.get("backbone_to_grad_params", {}))
            state = obj["state_dict"]
        except KeyError as e:
            raise PGNError(f"broken authors' version-2 checkpoint: missing key {e}") from None
        if kind not in BACKBONES:
            raise PGNError(f"unknown backbone_type {kind!r} in checkpoint")
        return PGNConfig(kind, params, head), params, head, state, "authors-v2"
    if version == 1:
        if "state_dict" not in obj:
            raise PGNError("broken authors' version-1 checkpoint: no state_dict")
        params = dict(obj.get("params", {}))
        kind, _ = _guess_backbone(params, obj["state_dict"], preset)
        params = _authors_backbone_params(kind, params)
        return None, params, None, obj["state_dict"], "authors-v1"
    if version is None and "state_dict" not in obj and "config" not in obj:
        state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not state:
            raise PGNError("not a PGN checkpoint: no tensors found")
        params = {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
        grad_scale = params.pop("grad_scale", None)
        kind, _ = _guess_backbone(params, state, preset)
        head = None
        if grad_scale is not None:
            grad_scale = float(grad_scale)
            if kind == "unet" and grad_scale == LEGACY_UNET_GRAD_SCALE:
                warnings.warn("legacy UNet checkpoint: grad_scale 1e-3 (batch-mean era) rewritten to 0.048", stacklevel=2)
                grad_scale = GRAD_SCALE_UNET
            head = HeadConfig(grad_scale=grad_scale)
        return PGNConfig(kind, _authors_backbone_params(kind, params), head or _default_head(kind)), _authors_backbone_params(kind, params), head, state, "authors-v0"
    if "state_dict" in obj:
        raise PGNError("checkpoint has a state_dict but no config: load it with pgn.load(path, preset=...) or re-save with pgn.save")
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

    Args:
        path: the checkpoint file.
        preset: expected preset (e.g. ``"resnet4"``). The checkpoint's backbone must match it, else a clear error;
            for the authors' version-0/1 files it also supplies what the file does not store (the head).
        map_location: device for the loaded tensors.
        ignore_grad_scale_mismatch: allow a ``grad_scale`` override that differs from the checkpoint's
            (the override wins, with a warning), as the authors' ``--pgn-ignore-grad-scale-mismatch``.
        **overrides: config overrides as in :func:`pgn.build` (``value_space``, ``grad_scale``, …).
    """
    obj = read_file(path, map_location)
    config, params, head, state, fmt = parse_checkpoint(obj, preset=preset)
    kind = config.backbone if config is not None else preset_config(preset).backbone if preset else None
    if kind is None:
        kind, _ = _guess_backbone(params, state, None)
    if config is None:
        base = preset_config(preset) if preset else PGNConfig(kind, params, _default_head(kind))
        config = replace(base, backbone=kind, backbone_params=dict(params), head=head or base.head)
    if preset is not None:
        expected = apply_overrides(preset_config(preset), **{k: v for k, v in overrides.items() if k not in ("value_space",)})
        got = PGNConfig(config.backbone, config.backbone_params)
        want = PGNConfig(expected.backbone, expected.backbone_params)
        if (got.backbone, {k: v for k, v in got.backbone_params.items() if k != "out_channels"}) != (
            want.backbone,
            {k: v for k, v in want.backbone_params.items() if k != "out_channels"},
        ):
            raise PGNError(f"{path} holds a {_describe(got)} backbone, but preset {preset!r} is a {_describe(want)}")
        if head is not None and expected.head.kind != config.head.kind:
            raise PGNError(f"{path} was trained with the {config.head.kind!r} head, but preset {preset!r} uses {expected.head.kind!r}")
        config = replace(config, preset=preset)
    config = _merge_head_overrides(config, overrides, ignore_grad_scale_mismatch, str(path))
    model = PGN(config)
    model.backbone.load_state_dict(match_state_dict(model.backbone.state_dict(), state))
    model.checkpoint_format = fmt
    return model.to(map_location).eval()


def _merge_head_overrides(config: PGNConfig, overrides: dict, ignore_grad_scale_mismatch: bool, where: str) -> PGNConfig:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    gs = overrides.get("grad_scale")
    if gs is not None and float(gs) != config.head.grad_scale:
        if not ignore_grad_scale_mismatch:
            raise PGNError(
                f"grad_scale {gs} differs from the checkpoint's {config.head.grad_scale} ({where}); pass "
                f"ignore_grad_scale_mismatch=True to use yours"
            )
        warnings.warn(f"using grad_scale {gs} instead of the checkpoint's {config.head.grad_scale}", stacklevel=3)
    backbone_keys = set(BACKBONES[config.backbone][1].__dataclass_fields__)
    head_only = {k: v for k, v in overrides.items() if k not in backbone_keys}
    return apply_overrides(config, **head_only)


def _describe(config: PGNConfig) -> str:
    p = config.backbone_params
    if config.backbone == "resnet":
        return f"resnet(num_blocks={p['num_blocks']}, down={p['down_channels']}, up={p['up_channels']})"
    return f"unet(down={p['down_channels']}, up={p['up_channels']}, block={p['block_type']})"
