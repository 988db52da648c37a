"""ExecuTorch keeps the traced order of operators while it cuts delegates out (:func:`export.executorch.operator_order_kept`).

The order decides memory: XNNPACK's workspace is sized by the live tensors of its largest delegate in that order.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pgn.export.executorch import import_executorch, operator_order_kept, quiet_native_output

from export_helpers import needs

pytestmark = needs("executorch")

TAPS = 6


class TiledSum(nn.Module):
    """Three delegable regions cut apart by cumulative sums (no XNNPACK kernel); each adds up ``TAPS``
    independent matrix products one at a time, as :mod:`export.matmul_conv` does (ExecuTorch cuts the delegates
    out one after another, so at least one is cut from a graph that was re-sorted before)."""

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # noqa: D102
        for _ in range(3):
            x = torch.cumsum(x, dim=1)
            total = None
            for k in range(TAPS):
                part = torch.bmm(x, w[k: k + 1]) + float(k)
                total = part if total is None else total + part
            x = total
        return x


def delegate_orders(keep: bool) -> list[list[str]]:
    """The operator names (``aten.bmm.default``, …) of each XNNPACK delegate of :class:`TiledSum`, in the order the delegate runs them."""
    et = import_executorch()
    program = torch.export.export(TiledSum(), (torch.rand(1, 32, 16), torch.rand(TAPS, 16, 16)))
    with warnings.catch_warnings(), quiet_native_output():
        warnings.simplefilter("ignore")
        if keep:
            edge = et.to_edge_transform_and_lower(program, partitioner=[et.XnnpackPartitioner()])
        else:  # the unwrapped lowering, order as ExecuTorch leaves it
            from executorch.exir import to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(program, partitioner=[et.XnnpackPartitioner()])
    graph_module = edge.exported_program().graph_module
    return [[n.target.__name__ for n in module.original_module.graph.nodes if n.op == "call_function"]
            for _, module in graph_module.named_children() if hasattr(module, "original_module")]


def interleaved(names: list[str]) -> bool:
    """Whether every product after the first is added up before the next product is computed."""
    products = [i for i, name in enumerate(names) if ".bmm." in name]
    return len(products) == TAPS and all(any(".add." in name for name in names[a:b]) for a, b in zip(products[1:], products[2:]))


def test_the_lowering_keeps_the_traced_order_in_every_delegate():
    orders = delegate_orders(keep=True)
    tiled = [names for names in orders if any("bmm" in n for n in names)]
    assert tiled and all(interleaved(names) for names in tiled), orders


def test_without_it_executorch_computes_every_product_before_adding_any():
    """What the context guards against (if this fails, ExecuTorch no longer re-sorts breadth-first: the context
    may then go)."""
    tiled = [names for names in delegate_orders(keep=False) if any("bmm" in n for n in names)]
    assert tiled and not all(interleaved(names) for names in tiled)


def test_the_context_restores_executorchs_own_sort():
    import executorch.exir.lowered_backend_module as lowered

    before = lowered.legalize_graph
    with operator_order_kept():
        assert lowered.legalize_graph is not before
    assert lowered.legalize_graph is before
    with pytest.raises(RuntimeError), operator_order_kept():
        raise RuntimeError("lowering failed")
    assert lowered.legalize_graph is before
