"""Importing ExecuTorch's runtime without its compiler (:mod:`export.executorch_runtime`)."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("executorch")

from pgn.export import executorch_runtime  # noqa: E402

FRESH = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("ignore")
    from pgn.export import executorch_runtime as r

    def compiler_modules():
        return [m for m in sys.modules if m == "executorch.exir" or m.startswith("executorch.exir.")]

    # where the runtime needs more of the compiler than its warnings, it is imported the ordinary way
    ordinary, seen = r._import, []

    def needs_more(training):
        seen.append(sys.modules.get("executorch.exir"))
        if len(seen) == 1:
            raise ImportError("cannot import name 'x' from 'executorch.exir'")
        return "ordinary"

    r._import = needs_more
    assert r.import_runtime() == "ordinary"
    assert seen[0] is not None and not hasattr(seen[0], "__file__")  # first try: under the bare package
    assert seen[1] is None and not compiler_modules()  # second try: nothing left of it
    r._import = ordinary

    et = r.import_runtime(training=True)
    assert et.Runtime.get().backend_registry.is_available("XnnpackBackend")
    assert callable(et.load_for_training) and callable(et.get_sgd_optimizer)
    # nothing of the compiler is left in sys.modules: a later import of it is an ordinary, complete one (the
    # in-process test below imports it after the runtime)
    assert not compiler_modules() and "torch._dynamo" not in sys.modules, compiler_modules()
    print("ok")
""")


def test_the_runtime_imports_without_the_compiler_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_an_imported_compiler_is_left_as_it_is():
    executorch_runtime.import_runtime()  # in a process that had not imported the compiler: the bare package is gone
    import executorch.exir
    from executorch.exir import to_edge_transform_and_lower

    assert executorch.exir._warnings.ExperimentalWarning and callable(to_edge_transform_and_lower)
    before = sys.modules["executorch.exir"]
    et = executorch_runtime.import_runtime()
    assert sys.modules["executorch.exir"] is before is executorch.exir and et.Verification is not None
