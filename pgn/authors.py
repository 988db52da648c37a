"""The authors' names for our things: backbone parameters, so their checkpoints load by name, never by guess, and heads.

The authors' reference code names its modules differently from ours; their checkpoint files (versions 0, 1 and 2)
hold exactly ``backbone.state_dict()`` of their modules. This module maps each of our module names to theirs; a
tensor keeps its leaf name (``weight``, ``bias``, ``running_mean``, …), so ``encoder.2.dw1.weight`` is their
``layer2.cdw1.weight``.

Their layouts:

* ResNet-N (``ResnetGenerator``): one flat ``nn.Sequential`` called ``model``, where each conv → norm → LeakyReLU
  unit takes three entries and each residual block one (``model.6.conv_block.0.weight``, …).
* UNet (``UNetCustom``): the encoder levels are ``layer0`` … ``layer{L-1}``, their 1×1 laterals
  ``layer{i}_1x1``, the full-resolution branch ``conv_original_size0/1``. The decoder convs are *named* by level
  (``conv_up{i-1}`` for level i ≥ 1, ``conv_original_size2`` for level 0) and *registered* shallowest first,
  but run deepest first; our ``decoder`` list is stored in the order it runs. Two of their decoder convs
  (``conv_up1``, ``conv_up2`` in the paper's UNet) have identical shapes, so only their names tell them apart.
  The optional value head is ``conv_sobolev_{level}`` and ``linear_sobolev``.
* Every conv unit (``sep``/``full``) is an ``nn.Sequential``; every encoder block names its layers as below.
"""

from __future__ import annotations

from torch import nn

from .backbones import ResNetBackbone, ResNetConfig, UNetBackbone, UNetConfig

#: The authors' head selection, (``backbone_to_grad_type``, proxy ``type``) as stored in their version-2 checkpoints
#: and given by their ``--pgn-backbone-to-grad``/``--pgn-proxy-type`` flags → our head kind.
AUTHORS_HEADS: dict[tuple[str, str], str] = {
    ("proxy", "sigmoid"): "constrained",
    ("proxy", "raw"): "proxy",
    ("direct", "raw"): "direct",
    ("direct", "sigmoid"): "hybrid",
    ("proxy", "warped_target"): "warped",
}

#: Inside one conv unit (:func:`pgn.backbones.blocks.make_conv`): our submodule → theirs.
CONV_PARTS: dict[str, dict[str, str]] = {
    "sep": {"spatial": "0", "pointwise": "1"},
    "full": {"conv": "0"},
}

#: Inside one encoder block (:func:`pgn.backbones.blocks.make_block`): our submodule → theirs.
BLOCK_PARTS: dict[str, dict[str, str]] = {
    "doubleblaze": {
        "dw1": "cdw1", "pw1": "cpw1", "norm1": "bn1",
        "dw2": "cdw2", "pw2": "cpw2", "norm2": "bn2",
        "shortcut": "c1",
    },
    "singleblaze": {"dw": "cdw1", "pw": "cpw1", "norm": "bn1", "shortcut": "c1"},
    "singleres": {"conv1": "c1", "norm1": "bn1", "conv2": "c2", "norm2": "bn2", "shortcut": "cr1"},
    "doubleres": {
        "first.conv1": "c11", "first.norm1": "bn11", "first.conv2": "c12", "first.norm2": "bn12", "first.shortcut": "cr11",
        "second.conv1": "c21", "second.norm1": "bn21", "second.conv2": "c22", "second.norm2": "bn22", "second.shortcut": "cr21",
    },
}

#: How many entries of the authors' flat ResNet ``model`` each of our ResNet layers takes.
_RESNET_ENTRIES = {"cbl": 3, "block": 1, "upsample": 1, "conv": 1}


def unit_names(ours: str, theirs: str, parts: dict[str, str]) -> dict[str, str]:
    """Module names inside one unit: ``{ours}.{part}`` → ``{theirs}.{their part}`` for every entry of ``parts``."""
    return {f"{ours}.{a}": f"{theirs}.{b}" for a, b in parts.items()}


def resnet_module_names(config: ResNetConfig) -> dict[str, str]:
    """Our ResNet-N module names → the authors' (``layers.0.0`` → ``model.0``, ``layers.2.body.3`` → ``model.6.conv_block.3``)."""
    layout = (
        ["cbl"] * len(config.down_channels)
        + ["block"] * config.num_blocks
        + ["upsample", "cbl"] * len(config.up_channels)
        + ["conv"]
    )
    names: dict[str, str] = {}
    theirs = 0
    for ours, kind in enumerate(layout):
        if kind == "cbl":  # conv, norm (their next entry), LeakyReLU
            names.update({f"layers.{ours}.0": f"model.{theirs}", f"layers.{ours}.1": f"model.{theirs + 1}"})
        elif kind == "block":  # the same conv, norm, LeakyReLU, conv, norm sequence inside
            names[f"layers.{ours}.body"] = f"model.{theirs}.conv_block"
        elif kind == "conv":
            names[f"layers.{ours}"] = f"model.{theirs}"
        theirs += _RESNET_ENTRIES[kind]
    return names


def unet_level_name(level: int) -> str:
    """The authors' name of the decoder conv of UNet ``level`` (0 = full resolution)."""
    return f"conv_up{level - 1}" if level >= 1 else "conv_original_size2"


def unet_module_names(config: UNetConfig) -> dict[str, str]:
    """Our UNet module names → the authors' (``decoder.0`` → ``conv_up3``, …, ``decoder.4`` → ``conv_original_size2``)."""
    levels = len(config.down_channels)
    block, conv = BLOCK_PARTS[config.block_type], CONV_PARTS[config.conv_type]
    names = {"encoder.0.0": "layer0.0", "encoder.0.1": "layer0.1", "head": "conv_last"}
    names.update(unit_names("encoder.1.1", "layer1.1", block))  # level 1 is max-pool → block
    for i in range(2, levels):
        names.update(unit_names(f"encoder.{i}", f"layer{i}", block))
    names.update(unit_names("full_res.0", "conv_original_size0", conv))
    names.update(unit_names("full_res.1", "conv_original_size1", conv))
    for i in range(levels):
        names.update(unit_names(f"laterals.{i}", f"layer{i}_1x1", conv))
    for k in range(levels):  # our decoder[k] runs k-th, on level L-1-k
        names.update(unit_names(f"decoder.{k}", unet_level_name(levels - 1 - k), conv))
    if config.predict_value:
        for k in range(levels):
            names.update(unit_names(f"value_convs.{k}", f"conv_sobolev_{levels - 1 - k}", conv))
        names["value_fc"] = "linear_sobolev"
    return names


def key_names(module: nn.Module, module_names: dict[str, str]) -> dict[str, str]:
    """Every key of ``module.state_dict()`` → the authors' key, given the module-name map.

    The longest named module containing a tensor decides (``layers.2.body`` → ``model.6.conv_block`` renames
    ``layers.2.body.3.weight`` to ``model.6.conv_block.3.weight``). Keys outside every named module keep our
    name (they then find no partner in an authors' file).
    """
    out = {}
    for key in module.state_dict():
        parts = key.split(".")
        out[key] = key
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in module_names:
                out[key] = ".".join([module_names[prefix], *parts[cut:]])
                break
    return out


def authors_names(backbone: nn.Module) -> dict[str, str]:
    """Our state-dict keys of a ResNet or UNet backbone → the authors' keys for the same tensors."""
    if isinstance(backbone, ResNetBackbone):
        return key_names(backbone, resnet_module_names(backbone.config))
    if isinstance(backbone, UNetBackbone):
        return key_names(backbone, unet_module_names(backbone.config))
    return {}
