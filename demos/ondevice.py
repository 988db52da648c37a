"""The on-device recipe: fit a generator with a PGN exported to ONNX, using nothing but an MSE trainer.

The PGN gradient is the gradient of a scaled MSE towards its proxy target ``P`` (paper Eq. 4-7): in
ImageNet-normalized space ``g_n = α·2/(C·H·W)·(ŷ_n − P_n)``. With respect to the RGB [0, 1] image that is::

    g = α·2/(C·H·W)·(ŷ − P)/σ_c²   =   ∂/∂ŷ  α·mean_{c,h,w} (ŷ − P)²/σ_c²

so a per-channel weighted MSE towards ``P`` with weights ``α/σ_c²`` has exactly the PGN gradient. A device that
runs the exported PGN forward and trains with a weighted MSE therefore fine-tunes with the PGN: no VGG on the
device and no autograd through the PGN. :func:`pgn.surrogate_loss` is that loss (defined once, in ``pgn``);
``tests/demos/test_demos_equivalences.py``
proves that its generator-parameter gradients equal those of :class:`pgn.PGNLoss`.
"""

from __future__ import annotations

import torch

import pgn
from pgn.errors import PGNError, first_line
from pgn.surrogate import check_surrogate_applies


class Unavailable(PGNError):
    """A loss row cannot run here (a missing package, a failed export); the message says why, and the demo goes on."""


def open_onnx_runtime(model: pgn.PGN, size: tuple[int, int], batch: int, output_dir) -> tuple[object | None, str]:
    """Export ``model`` to ONNX (fixed ``batch`` × 3 × ``size``, fp32) and open it in ONNX Runtime on the CPU.

    Returns ``(runtime, "ok")``, or ``(None, why not)``: it never raises for a missing or failing exporter.
    """
    from pgn.export import RuntimeUnavailable, export, load_runtime

    try:
        result = export(model, "onnx", output_dir=output_dir, size=size, batch=batch, dynamic=False, precision="fp32")[0]
    except PGNError as e:
        return None, f"ONNX export failed: {e}"
    if result.status == "failed" or result.artifact is None:
        return None, f"ONNX export failed: {result.reason}"
    try:
        return load_runtime(result.artifact, target="onnx", device="cpu"), "ok"
    except RuntimeUnavailable as e:
        return None, f"ONNX Runtime unavailable: {first_line(e)}"


def onnx_runtime(run, config, why: str = ""):
    """The run's PGN exported to ONNX for the train frames and opened in ONNX Runtime, once per run (rows share it).

    Raises :class:`Unavailable` (``why`` + the reason) when it cannot be made; the first failure adds a warning.
    """
    if "onnx" not in run.memo:
        check_surrogate_applies(run.pgn)
        run.memo["onnx"] = open_onnx_runtime(run.pgn, (config.size, config.size), config.train_frames, config.output_dir / "onnx")
        if run.memo["onnx"][0] is None:
            run.warnings.append(f"on-device rows skipped: {run.memo['onnx'][1]}")
    runtime, status = run.memo["onnx"]
    if runtime is None:
        raise Unavailable(why + status)
    return runtime


def finetune_in_training_program(init: torch.nn.Module, model: pgn.PGN, poses: torch.Tensor, target: torch.Tensor,
                                 mse_weight: float, lr: float, steps: int, path, meter=None, progress=None,
                                 kernels: str = "xnnpack", precision: str = "fp32") -> torch.nn.Module:
    """Fine-tune a copy of ``init`` with every step in ExecuTorch's training runtime, through the export package.

    ``export.export_training_step`` writes the step program (generator, frozen PGN in ``precision``, surrogate +
    λ·MSE, backward) at ``path``, verified against one eager step; ``export.load_training`` runs ``steps`` steps of
    it with SGD at ``lr``. ``meter`` (a :class:`~pgn.benchmarks.measure.LossMeter`) times each step and counts the
    memory of loading the program (ExecuTorch allocates its planned memory then). Returns the fitted copy of ``init``.
    """
    import copy
    from contextlib import nullcontext

    from pgn.export import FittingLoss, SGDRecipe, export_training_step, load_training

    poses, target = poses.float().contiguous(), target.float().contiguous()
    export_training_step(init, (poses,), FittingLoss.pgn(model, mse_weight, precision), output=path, target=target,
                         optimizer=SGDRecipe(lr=lr), kernels=kernels)
    with meter.measure(timed=False) if meter is not None else nullcontext():
        program = load_training(path)
    for _ in range(steps):
        with meter.measure() if meter is not None else nullcontext():
            loss = program.step(poses, target)
        if progress is not None:
            progress(loss)
    tuned = copy.deepcopy(init)
    tuned.load_state_dict(program.state_dict(), strict=False)
    return tuned.eval()
