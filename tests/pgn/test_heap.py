"""``pgn.heap.new_objects_collected_only``: the heap from before is set aside within and put back at exit.

Frozen objects can still be freed by reference counting, so freeze counts are compared with zero, not exactly.
"""

import gc
import weakref

import pytest

from pgn.heap import new_objects_collected_only


class Node:
    pass


def _cycle():
    """A weak reference to a reference cycle that is garbage already."""
    node = Node()
    node.self = node
    return weakref.ref(node)


def test_the_heap_is_set_aside_within_and_put_back_at_exit(unfrozen_heap):
    assert gc.get_freeze_count() == 0
    with new_objects_collected_only():
        assert gc.get_freeze_count() > 0
        inside = _cycle()  # garbage made inside is still collected inside
        gc.collect()
        assert inside() is None
        with new_objects_collected_only():  # nested: one scope, the outer one (the inner does not thaw at exit)
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_collect_first_frees_earlier_garbage_at_entry(unfrozen_heap):
    before = _cycle()
    with new_objects_collected_only():
        assert before() is None


def test_without_collect_earlier_garbage_waits_for_the_first_collection_after_exit(unfrozen_heap):
    before = _cycle()
    with new_objects_collected_only(collect=False):
        gc.collect()
        assert before() is not None  # set aside with the live heap
    gc.collect()
    assert before() is None  # back in the oldest generation: not leaked


def test_as_a_decorator_and_through_an_exception(unfrozen_heap):
    seen = []

    @new_objects_collected_only(collect=False)
    def work(fail):
        seen.append(gc.get_freeze_count())
        if fail:
            raise ValueError("boom")

    work(False)
    with pytest.raises(ValueError):
        work(True)
    assert len(seen) == 2 and min(seen) > 0 and gc.get_freeze_count() == 0


def test_a_heap_frozen_by_someone_else_is_left_frozen(unfrozen_heap):
    gc.freeze()
    try:
        with new_objects_collected_only():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_suite_sets_survivors_of_full_collections_aside():
    # the test processes' own setting (tests/conftest.py), not the library's: without it the suite is much slower
    gc.collect()
    assert gc.get_freeze_count() > 0
