"""Matching a checkpoint's tensors to a module: by our names, by the authors' names, or by unambiguous shapes.

Order of attempts in :func:`match_state_dict`:

1. our names (the file's keys are the module's own ``state_dict()`` keys);
2. the authors' names (:mod:`pgn.authors`), for their checkpoint files;
3. only if the file uses neither naming: module by module by shape, and only where every module's shapes are
   unique on both sides. Two modules with the same shapes (two BatchNorms of one width, two decoder convs) can
   only be told apart by name, so matching refuses instead of guessing.

Every tensor's shape is checked; ``num_batches_tracked`` counters may be absent (older PyTorch) and then keep
the module's value.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch

from .errors import PGNError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")


def strip_wrapper_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefixes DDP (``module.``), ``torch.compile`` (``_orig_mod.``) or a whole PGN (``backbone.``) add."""
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _core(keys) -> set[str]:
    return {k for k in keys if not _is_counter(k)}


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _preview(keys, n: int = 3) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def tensors_of(sd: dict) -> dict[str, torch.Tensor]:
    """The tensor entries of a loaded dict, wrapper prefixes removed."""
    return strip_wrapper_prefixes({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})


def names_fit(target_keys, source: dict[str, torch.Tensor], authors: dict[str, str] | None = None) -> bool:
    """Whether ``source`` names exactly the tensors of ``target_keys``, in our naming or the authors' (shapes unchecked)."""
    theirs = _core(tensors_of(source))
    if theirs == _core(target_keys):
        return True
    return bool(authors) and theirs == _core(authors[k] for k in target_keys)


def match_state_dict(
    target: dict[str, torch.Tensor], source: dict, *, authors: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under the keys of ``target`` (a module's ``state_dict()``), every shape checked.

    Args:
        target: the state dict of the module to fill (gives the keys and shapes).
        source: the loaded checkpoint's state dict (non-tensor entries are ignored).
        authors: our key → the authors' key for the same tensor (:func:`pgn.authors.authors_names`).

    Raises:
        PGNError: one line naming the tensors that are missing, unexpected, of another shape, or (for files in
            neither naming) the modules whose shapes are ambiguous.
    """
    source = tensors_of(source)
    for naming, names in (("pgn-toolkit", {k: k for k in target}), ("the authors'", authors)):
        if not names:
            continue
        wanted = _core(names[k] for k in target)
        have = _core(source)
        if have == wanted:
            return _renamed(target, source, names)
        if len(have & wanted) > len(have) / 2:  # this naming, but not this architecture
            raise PGNError(
                f"checkpoint uses {naming} parameter names but does not fit this network: missing "
                f"{_preview(sorted(wanted - have)) or 'nothing'}; unexpected {_preview(sorted(have - wanted)) or 'nothing'} "
                f"(it was saved for a different architecture: check the preset and backbone options)"
            )
    return _match_by_shape(target, source)


def _renamed(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, ours in target.items():
        theirs = names[key]
        if theirs not in source:  # only counters may be absent
            out[key] = ours
            continue
        if _shape(source[theirs]) != _shape(ours):
            what = theirs if theirs == key else f"{theirs} (our {key})"
            raise PGNError(f"checkpoint tensor {what} has shape {_shape(source[theirs])}, this network needs {_shape(ours)}: it was saved for a different architecture")
        out[key] = source[theirs]
    return out


def _modules(sd: dict[str, torch.Tensor]) -> "OrderedDict[str, list[tuple[str, tuple]]]":
    groups: OrderedDict[str, list[tuple[str, tuple]]] = OrderedDict()
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if not _is_counter(leaf):
            groups.setdefault(prefix, []).append((leaf, _shape(value)))
    return groups


def _join(prefix: str | None, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _signature(leaves: list[tuple[str, tuple]]) -> tuple:
    return tuple(shape for _, shape in leaves)


def _match_by_shape(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fallback for files in neither naming: pair modules whose shapes are unique on both sides."""
    ours, theirs = _modules(target), _modules(source)
    n_ours = sum(len(v) for v in ours.values())
    n_theirs = sum(len(v) for v in theirs.values())
    if n_ours != n_theirs:
        raise PGNError(
            f"checkpoint has {n_theirs} weight tensors but this architecture has {n_ours}: it was saved for a "
            f"different backbone (check the preset, e.g. the number of residual blocks)"
        )
    their_by_sig: dict[tuple, list[str]] = {}
    for prefix, leaves in theirs.items():
        their_by_sig.setdefault(_signature(leaves), []).append(prefix)
    our_count = Counter(_signature(leaves) for leaves in ours.values())
    pairs: dict[str, str] = {}
    for prefix, leaves in ours.items():
        sig = _signature(leaves)
        candidates = their_by_sig.get(sig, [])
        if not candidates:
            shapes = ", ".join(f"{leaf}{list(s)}" for leaf, s in leaves)
            raise PGNError(f"checkpoint has no module matching {prefix or 'root'} ({shapes}): it was saved for a different architecture")
        if len(candidates) > 1 or our_count[sig] > 1:
            twins = [p for p, lv in ours.items() if _signature(lv) == sig]
            raise PGNError(
                f"checkpoint parameter names are neither pgn-toolkit's nor the authors', and its modules "
                f"{_preview(candidates, 2)} share the shapes {list(map(list, sig))} of {_preview(twins, 2)}: "
                f"only names can tell them apart, so nothing was loaded; re-save the weights under pgn-toolkit's names (pgn.save)"
            )
        pairs[prefix] = candidates[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in target.items():
        prefix, _, leaf = key.rpartition(".")
        their_prefix = pairs.get(prefix)
        if _is_counter(leaf):
            out[key] = source.get(_join(their_prefix, leaf), value)
            continue
        index = [lf for lf, _ in ours[prefix]].index(leaf)
        out[key] = source[_join(their_prefix, theirs[their_prefix][index][0])]
    return out
