"""Saving and loading PGN checkpoints: our format and the authors' released formats (versions 0, 1, 2).

Our format is a dict ``{"format": "pgn-toolkit", "format_version": 1, "config": PGNConfig.to_dict(),
"state_dict": backbone state dict, "meta": {...}}``, written atomically (temp file + rename) and read with
``torch.load(weights_only=True)``, so a checkpoint can never run code.

The authors' files hold only the backbone's state dict plus its constructor arguments:

* version 2: ``state_dict``, ``backbone_type``, ``backbone_params``, ``backbone_to_grad_type``,
  ``backbone_to_grad_params``, ``version``;
* version 1: ``state_dict``, ``params`` (backbone), ``version``; the head comes from the preset or overrides;
* version 0: a flat dict of tensors (the state dict) and backbone parameters, plus ``grad_scale``; a UNet whose
  stored grad_scale is exactly 1e-3 gets 0.048 (the authors' legacy rule).

Weights are matched by name: ours, or the authors' through the explicit map in :mod:`pgn.authors`. Only a file
in neither naming falls back to matching modules by shape, and only where no two modules share shapes
(:mod:`pgn.state_dicts`); anything that does not fit is a one-line error. Version-0/1 files that do not store
every backbone parameter take the rest from ``preset=`` or from the paper backbone whose names they match.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .authors import AUTHORS_HEADS, authors_names
from .backbones import BACKBONES, ImplausibleSize, UNetConfig, build_backbone
from .constants import GRAD_SCALE_RESNET, GRAD_SCALE_UNET, LEGACY_UNET_GRAD_SCALE
from .errors import PGNError, first_line
from .files import as_path, atomic_save, check_plain, read_file
from .heads import HeadConfig
from .model import PGN, PGNConfig, apply_overrides, nonfinite_tensors
from .presets import paper_backbones, preset_config
from .state_dicts import match_state_dict, names_fit, tensors_of
from .value_spaces import check_value_space

#: User-facing notices (legacy values rewritten, NaN weights, …): one line each on stderr unless logging is set up.
logger = logging.getLogger(__name__)

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
    """The toolkit's cache folder (downloaded weights, ``pgn-bench``'s exported artifacts): ``$PGN_HOME``, else
    ``$XDG_CACHE_HOME/pgn-toolkit``, else ``~/.cache/pgn-toolkit``."""
    if os.environ.get("PGN_HOME"):
        return Path(os.environ["PGN_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pgn-toolkit"


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


def save(model: PGN, path: str | Path, *, meta: dict | None = None, value_space: str | None = None) -> Path:
    """Save a PGN (config + backbone weights + version) atomically; returns the path.

    Args:
        model: the PGN (DDP- or compile-wrapped modules are unwrapped).
        path: target file, conventionally ``*.pt``.
        meta: extra JSON-like information stored under ``"meta"`` (training step, data, teacher weights, …):
            plain values and tensors only, so that the weights-only :func:`load` can read the file back.
        value_space: store the config with this value space instead of the model's (the weights are the same
            in both; e.g. a PGN trained in ``imagenet`` space saved for ``unit``-space users).

    Raises:
        PGNError: not a PGN, a ``meta`` entry that could not be read back (named), or a path that cannot be
            written (a folder, a read-only place, a full disk).
    """
    from . import __version__

    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, PGN):
        raise PGNError(f"save() expects a pgn.PGN, got {type(model).__name__}")
    path = as_path(path)
    if meta is not None and not isinstance(meta, dict):
        raise PGNError(f"meta must be a dict, got {type(meta).__name__}")
    check_plain(meta or {}, "meta")
    obj = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": dict(model.config.to_dict(), value_space=check_value_space(value_space or model.value_space)),
        "state_dict": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
        "meta": {"pgn_toolkit_version": __version__, "torch_version": str(torch.__version__), **(meta or {})},
    }
    return atomic_save(obj, path)


# --------------------------------------------------------------------------------------------------------
# Reading: our format and the authors' versions 0, 1, 2

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


def _authors_backbone_params(kind: str, params: dict, *, quiet: bool = False) -> dict:
    """The authors' backbone constructor arguments in our names (``out_channels`` is the head's business)."""
    names = _AUTHORS_RESNET_KEYS if kind == "resnet" else _AUTHORS_UNET_KEYS
    out = {}
    for key, value in params.items():
        if key in names:
            out[names[key]] = list(value) if isinstance(value, (tuple, list)) else value
        elif not quiet:
            logger.warning(f"pgn: ignoring unknown {kind} backbone parameter {key!r} in the authors' checkpoint")
    out.pop("out_channels", None)  # decided by the head
    return out


def _authors_head(kind: str, params: dict) -> HeadConfig:
    proxy_type = params.get("type", "sigmoid")
    grad_type = params.get("grad_type", "mse")
    if grad_type not in ("mse", "l1", "logcosh"):
        raise PGNError(f"the checkpoint's grad_type {grad_type!r} is not supported (supported: mse, l1, logcosh)")
    head_kind = AUTHORS_HEADS.get((kind, proxy_type))
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
    head: HeadConfig | None  #: None where the file does not store the head (authors' version 1, plain state dicts)
    state_dict: dict
    value_space: str = "unit"
    preset: str | None = None


def _backbone_keys(kind: str, params: dict) -> tuple[list[str], dict[str, str]] | None:
    """State-dict keys (ours, and ours → the authors') of backbone ``kind`` built with ``params``; None if invalid."""
    try:
        with torch.device("meta"):  # names only: no memory, no initialization
            backbone = build_backbone(kind, params)
    except ImplausibleSize:
        raise  # a size the file claims: say so, rather than "no backbone fits"
    except (PGNError, TypeError, ValueError):
        return None
    return list(backbone.state_dict()), authors_names(backbone)


#: Backbone type → the names of its configuration fields (except ``out_channels``, which the head decides).
_BACKBONE_FIELDS = {kind: {f.name for f in fields(cfg)} - {"out_channels"} for kind, (_, cfg) in BACKBONES.items()}

#: The first conv weight of a residual block: ours (``layers.3.body.0.weight``) or the authors' (``model.7.conv_block.0.weight``).
_RESIDUAL_BLOCK_WEIGHT = re.compile(r"^(layers\.\d+\.body|model\.\d+\.conv_block)\.0\.weight$")


def _infer_backbone(file_params: dict, state: dict, preset: str | None, overrides: dict | None = None) -> tuple[str, dict]:
    """Backbone type and parameters of an authors' version-0/1 file (or a plain state dict), which may store few.

    Candidates, the first whose parameter names (ours or the authors') the file's tensors carry exactly wins: the
    file's stored parameters on top of the preset's with the caller's backbone ``overrides``, of each backbone
    type's defaults (with the overrides that apply to it), of each paper backbone,
    then of a ResNet with as many residual blocks as the file holds. Without a match the preset decides (loading
    then names the misfit); without a preset, an error.
    """
    overrides = overrides or {}

    def applicable(kind: str) -> dict:
        return {k: v for k, v in overrides.items() if k in _BACKBONE_FIELDS[kind]}

    candidates: list[tuple[str, dict]] = []
    if preset is not None:
        base = preset_config(preset)
        candidates.append((base.backbone, dict(base.backbone_params, **applicable(base.backbone))))
    candidates += [(kind, applicable(kind)) for kind in BACKBONES]
    candidates += paper_backbones()
    tensors = tensors_of(state)
    blocks = {key.split(".")[1] for key in tensors if _RESIDUAL_BLOCK_WEIGHT.match(key)}
    if blocks:
        candidates.append(("resnet", {"num_blocks": len(blocks)}))

    def merged(kind: str, base_params: dict) -> dict:
        params = {k: v for k, v in base_params.items() if k != "out_channels"}
        return dict(params, **_authors_backbone_params(kind, file_params, quiet=True))

    for kind, base_params in candidates:
        params = merged(kind, base_params)
        keys = _backbone_keys(kind, params)
        if keys is not None and names_fit(keys[0], tensors, keys[1]):
            return kind, params
    if preset is not None:
        kind, base_params = candidates[0]
        return kind, merged(kind, base_params)
    raise PGNError(
        "cannot tell which backbone this checkpoint holds (its tensor names fit no preset): pass preset= "
        "(e.g. 'resnet4' or 'unet') and any non-default backbone options"
    )


def parse_checkpoint(obj: Any, *, preset: str | None = None, backbone_overrides: dict | None = None) -> ParsedCheckpoint:
    """Read the configuration and weights out of a loaded checkpoint in any supported format.

    ``preset`` and ``backbone_overrides`` (e.g. ``{"num_blocks": 5}``) only help with files that do not store
    their backbone parameters (the authors' versions 0/1, plain state dicts); they are checked, not applied.
    """
    if not isinstance(obj, dict):
        raise PGNError(f"not a PGN checkpoint: expected a dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT_NAME:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise PGNError(f"checkpoint format version {obj['format_version']} is newer than this pgn-toolkit supports; upgrade pgn-toolkit")
        try:
            c = PGNConfig.from_dict(obj["config"])
            state = obj["state_dict"]
        except (KeyError, TypeError) as e:
            raise PGNError(f"broken pgn-toolkit checkpoint: bad or missing config ({first_line(e)})") from None
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
        stored = dict(obj.get("params", {}))
        kind, params = _infer_backbone(stored, obj["state_dict"], preset, backbone_overrides)
        _authors_backbone_params(kind, stored)  # reports parameters we do not know
        return ParsedCheckpoint("authors-v1", kind, params, None, obj["state_dict"])
    if version is None and "state_dict" not in obj and "config" not in obj:
        state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not state:
            raise PGNError("not a PGN checkpoint: no tensors found")
        stored = {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
        grad_scale = stored.pop("grad_scale", None)
        kind, params = _infer_backbone(stored, state, preset, backbone_overrides)
        _authors_backbone_params(kind, stored)  # reports parameters we do not know
        head = None
        if grad_scale is not None:
            grad_scale = float(grad_scale)
            if kind == "unet" and grad_scale == LEGACY_UNET_GRAD_SCALE:
                logger.warning("pgn: legacy UNet checkpoint: grad_scale 1e-3 (batch-mean era) rewritten to 0.048")
                grad_scale = GRAD_SCALE_UNET
            head = HeadConfig(grad_scale=grad_scale)
        return ParsedCheckpoint("authors-v0", kind, params, head, state)
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
        preset: expected preset (e.g. ``"resnet4"``); for the authors' version-1 files it also supplies the head,
            and for files that store few or no backbone parameters (plain state dicts) the missing ones.
        map_location: device for the loaded tensors (a device this machine lacks is a clear error).
        ignore_grad_scale_mismatch: let a ``grad_scale`` override win over the checkpoint's, with a warning
            (the authors' ``--pgn-ignore-grad-scale-mismatch``).
        **overrides: as in :func:`pgn.build` (``value_space``, ``grad_scale``, ``num_blocks``, …).

    Weights with NaN or infinite values load, with a one-line warning naming the tensors (exporting such a model
    is refused).
    """
    path = as_path(path)
    all_backbone_fields = set().union(*_BACKBONE_FIELDS.values())
    asked = {k: v for k, v in overrides.items() if k in all_backbone_fields and v is not None}
    try:
        ck = parse_checkpoint(read_file(path, map_location), preset=preset, backbone_overrides=asked)
    except ImplausibleSize as e:
        raise PGNError(f"{path} describes an implausible model: {e}") from None
    base = preset_config(preset) if preset else None
    head = ck.head or (base.head if base else _default_head(ck.backbone))
    config = PGNConfig(ck.backbone, ck.backbone_params, head, ck.value_space, preset or ck.preset)

    backbone_keys = _BACKBONE_FIELDS[ck.backbone]
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
    load_backbone_state(model.backbone, ck.state_dict, path)
    model.checkpoint_format = ck.format
    return model.to(map_location).eval()


def load_backbone_state(backbone: nn.Module, state_dict: dict, where: str | Path) -> None:
    """Fill ``backbone`` from a checkpoint's state dict (our names or the authors'); warn about NaN/inf weights."""
    try:
        matched = match_state_dict(backbone.state_dict(), state_dict, authors=authors_names(backbone))
    except PGNError as e:
        raise PGNError(f"{where}: {e}") from None
    backbone.load_state_dict(matched)
    bad = nonfinite_tensors(backbone)
    if bad:
        shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        logger.warning(f"pgn: {where} has NaN or infinite values in {len(bad)} tensor(s): {shown}; the model's outputs will not be finite")


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
            logger.warning(f"pgn: using grad_scale {value} instead of the checkpoint's {config.head.grad_scale} ({path})")
            continue
        raise PGNError(f"{path} stores {key}={current[key]!r}; it cannot be changed to {value!r} for these weights")
    return overrides


def _describe(config: PGNConfig) -> str:
    p = config.backbone_params
    if config.backbone == "resnet":
        return f"resnet(num_blocks={p['num_blocks']}, down={p['down_channels']}, up={p['up_channels']})"
    extras = "".join(f", {k}={p[k]}" for k in ("conv_type", "norm_type", "predict_value", "top_channels") if p[k] != _UNET_DEFAULTS[k])
    return f"unet(down={p['down_channels']}, up={p['up_channels']}, block={p['block_type']}{extras})"


_UNET_DEFAULTS = {f.name: f.default for f in fields(UNetConfig)}
