"""``pgn-bench``: time and memory of a PGN gradient against VGG forward + backward, on every runtime."""

from __future__ import annotations

from pathlib import Path

import click

from pgn.cliutils import FiniteFloat, run_cli
from pgn.export.runtimes import MAX_THREADS

from .config import FULL, QUICK
from .runtimes import DEFAULT_RUNTIMES, QUICK_RUNTIMES, RUNTIMES

#: The last line of a plain run: where the rest of the matrix is.
FULL_HINT = (f"The rest of the matrix (the paper's {FULL.size}², int8, bf16, torch.compile, cached VGG targets): "
             "pgn-bench --full; other sizes: --size or --sweep-size.")


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("give at least one comma-separated name")
    return items


def _sizes(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of sizes, e.g. 128,224,256,512") from None
    if not sizes or min(sizes) < 16:
        raise click.BadParameter("sizes must be integers ≥ 16, e.g. 128,224,256,512")
    return sizes


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where to compute.")
@click.option("--full", is_flag=True,
              help=f"The full matrix: the paper's {FULL.size}², every runtime and precision ({','.join(DEFAULT_RUNTIMES['cpu'])} "
                   f"on cpu; {','.join(DEFAULT_RUNTIMES['cuda'])} on cuda), VGG-19 with cached target features, "
                   f"{FULL.repeats} timed calls after {FULL.warmup['cpu']} warm-up. Options given still apply.")
@click.option("--runtimes", metavar="LIST",
              help=f"Comma-separated runtimes: {', '.join(RUNTIMES)}. Default on cpu: {','.join(QUICK_RUNTIMES['cpu'])}; "
                   f"on cuda: {','.join(QUICK_RUNTIMES['cuda'])} (with --full see above; torch-bf16 only where the CPU "
                   "has native bfloat16).")
@click.option("--models", metavar="LIST",
              help=f"Comma-separated models (default: {','.join(QUICK.models)}; --full adds vgg19-cached); any PGN preset works.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Image pairs per gradient call.")
@click.option("--size", type=click.IntRange(16), help=f"Square input size (default {QUICK.size}; the paper's and --full's: {FULL.size}).")
@click.option("--sweep-size", metavar="LIST", help="Comma-separated sizes for a resolution sweep, e.g. 128,224,256,512.")
@click.option("--repeats", type=click.IntRange(1), help=f"Timed calls per measurement (default {QUICK.repeats}; --full: {FULL.repeats}).")
@click.option("--warmup", type=click.IntRange(0),
              help=f"Untimed calls first (default {QUICK.warmup['cpu']} on cpu, --full {FULL.warmup['cpu']}; {QUICK.warmup['cuda']} on cuda).")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="Intra-op threads of every runtime (default: all usable cores).")
@click.option("--weights", metavar="paper|DIR", help="PGN weights: the authors' released checkpoints or a folder of <model>.pt (default: seeded random init).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--check-values", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="When the PyTorch rows check input values (NaN, range): auto skips it on the GPU, where it synchronizes "
                   "every call; always measures that cost.")
@click.option("--export-jobs", type=click.IntRange(1), default=2, show_default=True,
              help="Artifact exports run at once (all before the first measurement, so they never overlap a timed call).")
@click.option("--graph-options", metavar="LIST",
              help="Export-graph options of the exported runtimes, as pgn-export --graph-options (default: export's defaults).")
@click.option("--timeout", type=FiniteFloat(1), default=900, show_default=True, help="Seconds one measurement may take.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), metavar="FILE", help="Write every row, raw sample and the environment here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), metavar="FILE",
              help="Write the time/memory plot (PNG); with --sweep-size also FILE-scaling.png.")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the tables as Markdown (with the exact command line).")
@click.option("--from-json", "from_json", type=click.Path(path_type=Path), metavar="FILE",
              help="Measure nothing: re-render a saved run's table, Markdown and plots (ratios recomputed from its raw samples).")
@click.option("--no-cache", is_flag=True, help="Export every artifact afresh and keep none (the artifact cache is left as it is).")
@click.option("--clear-cache", is_flag=True, help="Delete the cached artifacts and exit.")
@click.option("--quiet", is_flag=True, help="No live progress.")
@click.option("--fitting", type=click.Choice(["default", "full"]), default=None,
              help="Measure the whole fitting step of a generator instead: eager PyTorch and ExecuTorch, losses "
                   "mse/vgg19/vgg11/pgn/pgn-int8. 'default': talking-head at 64² and 128², batch 1 and 8; 'full': both "
                   "generators at 64², 128², 256². --sweep-size, --batch, --repeats, --threads and --timeout narrow it.")
@click.option("--fitting-losses", metavar="LIST", help="With --fitting: the losses (default all).")
@click.option("--fitting-generators", metavar="LIST", help="With --fitting: talking-head,skip-net.")
@click.option("--fitting-runtimes", metavar="LIST", help="With --fitting: eager,executorch (default both).")
def main(device, full, runtimes, models, batch, size, sweep_size, repeats, warmup, threads, weights, seed, check_values, export_jobs,
         graph_options, timeout, json_path, plot_path, markdown_path, from_json, no_cache, clear_cache, quiet, fitting,
         fitting_losses, fitting_generators, fitting_runtimes):
    """Time and peak memory of one gradient: PGN forward vs VGG-19/VGG-11 forward + backward.

    Each measurement runs in its own process. VGG: forward on ŷ (and on y, or with cached target features
    for the -cached models), backward to the input only. PGNs: one forward. A runtime that cannot run here is
    a row that says why.

    The default run is the quick matrix: VGG-19 and VGG-11 against resnet4, resnet6, resnet8 and unet on the fp32
    runtime of every family (PyTorch, ONNX Runtime, ExecuTorch; Core ML on macOS), at 128² with the median of 5
    calls, in about a minute and a half on a 2-core CPU. --full measures the paper's 224² and everything else.
    Exported artifacts are kept in $PGN_HOME/bench, else $XDG_CACHE_HOME/pgn-toolkit/bench, else
    ~/.cache/pgn-toolkit/bench (checked against their manifest's sha256, rebuilt when anything that made them
    changed), so a second run only measures.

    Bad input: one line, exit 1 (usage errors 2), before anything is measured. --json/--markdown are written
    whole (devices such as /dev/null in place); if one cannot be written, the results are kept in a JSON file.

    \b
    Examples:
      pgn-bench
      pgn-bench --full --json bench.json --plot bench.png
      pgn-bench --size 224 --repeats 10                # the quick matrix at the paper's size
      pgn-bench --models vgg19,resnet4,unet --runtimes torch,onnxruntime --repeats 20 --json bench.json --plot bench.png
      pgn-bench --device cuda --batch 8
      pgn-bench --fitting default --json fit.json --plot fit.png --markdown fit.md
      pgn-bench --device cuda --runtimes torch --check-values always   # the cost of checking inputs on the GPU
      pgn-bench --sweep-size 128,224,256,512 --models vgg19,resnet4,unet --runtimes torch --plot sweep.png
      pgn-bench --from-json bench.json --markdown bench.md --plot bench.png
    """
    if fitting is not None:
        run_cli(lambda: _fitting(fitting, sweep_size, batch, repeats, threads, timeout, fitting_losses, fitting_generators,
                                 fitting_runtimes, not no_cache, json_path, markdown_path, plot_path),
                files={"--json": json_path, "--plot": plot_path, "--markdown": markdown_path})
        return
    if size is not None and sweep_size is not None:
        raise click.UsageError("give either --size or --sweep-size, not both")
    if clear_cache:
        run_cli(_clear_cache)
        return
    sizes = _sizes(sweep_size) or ((size,) if size is not None else None)
    options = {"device": device, "full": full, "runtimes": _csv(runtimes), "models": _csv(models), "batch": batch, "sizes": sizes,
               "repeats": repeats, "warmup": warmup, "threads": threads, "weights": weights, "seed": seed, "timeout": timeout,
               "check_values": check_values, "export_jobs": export_jobs, "graph_options": graph_options, "cache": not no_cache}
    outputs = {"json_path": json_path, "plot_path": plot_path, "markdown_path": markdown_path}
    files = {"--json": json_path, "--plot": plot_path, "--markdown": markdown_path}
    if plot_path is not None and sizes is not None and len(sizes) > 1:
        from .report import scaling_plot_path

        files["--plot (scaling)"] = scaling_plot_path(plot_path)
    run_cli(lambda: _run({k: v for k, v in options.items() if v is not None}, **outputs, from_json=from_json, progress=not quiet),
            files=files)


def _clear_cache() -> None:
    from pgn.export.cache import ArtifactCache, default_cache_dir

    folder = default_cache_dir("bench")
    removed = ArtifactCache(folder).clear()
    click.echo(f"removed {removed} cached artifact{'s' if removed != 1 else ''} from {folder}")


def _load(from_json: Path):
    import json

    from pgn.errors import PGNError

    from .results import BenchmarkResult, attach_ratios

    from pgn.files import check_input_file

    from_json = check_input_file(from_json, "--from-json")
    try:
        data = json.loads(from_json.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise PGNError(f"cannot read {from_json}: {e}") from None
    result = BenchmarkResult.from_dict(data)
    attach_ratios(result.rows)
    return result


def _run(options: dict, *, json_path: Path | None, plot_path: Path | None, markdown_path: Path | None, from_json: Path | None,
         progress: bool) -> None:
    import shlex
    import sys

    from pgn.files import write_text

    from .config import BenchmarkConfig
    from .harness import run_benchmark
    from .report import plot_scaling, plot_time_memory, render_markdown, render_table, scaling_plot_path

    from pgn.extras import require_all

    if plot_path is not None:
        require_all(("matplotlib",), "pgn-bench --plot", "bench")
    if from_json is not None:
        result = _load(from_json)
    else:
        require_all(("psutil",), "pgn-bench", "bench")
        result = run_benchmark(BenchmarkConfig(**options), progress=progress)
        result.config["command"] = shlex.join(["pgn-bench", *sys.argv[1:]])
    render_table(result)
    saved = from_json  # where the results are kept on disk, once they are
    writes = []
    if json_path is not None:
        writes.append(lambda: result.write_json(json_path))
    if markdown_path is not None:
        command = result.config.get("command", "(run from Python)")
        writes.append(lambda: write_text(markdown_path, f"`{command}`\n\n{render_markdown(result)}"))
    if plot_path is not None:
        writes.append(lambda: plot_time_memory(result, plot_path))
        if len(result.config["sizes"]) > 1:
            writes.append(lambda: plot_scaling(result, scaling_plot_path(plot_path)))
    for write in writes:
        try:
            path = write()
        except OSError as e:
            _keep_results(result, e, saved)
        if path is not None:  # None: the JSON went to stdout
            click.echo(f"wrote {path}")
            saved = saved or (path if path == json_path else None)
    if not any(r.ok for r in result.rows):
        from pgn.errors import PGNError

        raise PGNError("nothing could be measured: every row above says why")
    if from_json is None and result.config.get("matrix") == "quick":
        click.echo(FULL_HINT)


def _keep_results(result, error: OSError, saved: Path | None) -> None:
    """A write failed after the measurement: make sure the results are on disk somewhere, and stop with one line saying where."""
    import tempfile
    import time

    from pgn.cliutils import describe_os_error
    from pgn.errors import PGNError

    if saved is None:
        name = f"pgn-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
        for folder in (Path.cwd(), Path(tempfile.gettempdir()), Path.home()):
            try:
                saved = result.write_json(folder / name)
                break
            except OSError:
                continue
    if saved is None:
        raise PGNError(f"{describe_os_error(error)}; no writable folder was found for the results (the table above has them)")
    raise PGNError(f"{describe_os_error(error)}; the results are in {saved} (pgn-bench --from-json {saved} re-renders the "
                   f"table, Markdown and plots)")


if __name__ == "__main__":
    main()


def _fitting(mode, sweep_size, batch, repeats, threads, timeout, losses, generators, runtimes, cache, json_path,
             markdown_path, plot_path) -> None:
    """``--fitting``: the fitting-step grid (:mod:`benchmarks.fitting`), narrowed by the options given."""
    import sys
    from dataclasses import replace

    from pgn.errors import PGNError

    from .fitting import GENERATORS, LOSSES, RUNTIMES, FittingGrid, main_fitting

    grid = FittingGrid.full() if mode == "full" else FittingGrid()
    changes = {k: v for k, v in {"repeats": repeats, "timeout": timeout, "cache": cache}.items() if v is not None}
    if sweep_size:
        changes["sizes"] = _sizes(sweep_size)
    if click.get_current_context().get_parameter_source("batch") is not click.core.ParameterSource.DEFAULT:
        changes["batches"] = (batch,)  # --batch 1 given: batch 1 only
    if threads:
        changes["threads"] = threads
    for key, value, known in (("losses", losses, LOSSES), ("generators", generators, GENERATORS), ("runtimes", runtimes, RUNTIMES)):
        if value:
            chosen = _csv(value)
            unknown = [v for v in chosen if v not in known]
            if unknown:
                raise PGNError(f"unknown {key} {', '.join(unknown)}: choose from {', '.join(known)}")
            changes[key] = chosen if key != "losses" or "mse" in chosen else ("mse", *chosen)
    main_fitting(replace(grid, **changes), json_path, markdown_path, plot_path, "pgn-bench " + " ".join(sys.argv[1:]))
