"""Garbage collection around heavy work in a process that holds a large heap.

With torch and an exporter imported, a process keeps hundreds of thousands of objects alive (modules, functions,
types) that can never be garbage, and every full collection looks at each of them again. An ExecuTorch lowering or
a fitting loop allocates enough to trigger many full collections. Setting the heap that existed before the work
aside (``gc.freeze``) leaves the collector only what the work creates (measured in results/RESULTS.md, "Test
suite, fourth pass").
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def new_objects_collected_only(collect: bool = True) -> Iterator[None]:
    """Within, garbage collections look only at the objects created inside: everything alive at entry (imported
    modules, loaded models, data) is set aside (``gc.freeze``) and rejoins the oldest generation at exit.

    Garbage made inside is collected as usual; garbage made before waits for the first full collection after exit.
    Usable as a decorator. Where something else has frozen objects already, this does nothing (it would thaw them
    at exit), so scopes nest.

    Args:
        collect: first run one full collection, so that the work starts from a clean heap (a measured loop wants
            that; an export only wants the speed and leaves earlier garbage for later).
    """
    if gc.get_freeze_count():
        yield
        return
    if collect:
        gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
