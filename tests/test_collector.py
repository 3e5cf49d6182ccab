"""The cycle collector around traces and passes: paused, then what they made promoted."""

from __future__ import annotations

import gc
import weakref

import pytest

from ember import models
from ember._inspect import trace_graph
from ember.ir.collector import pause, resume
from ember.passes import run_passes


class Cell:
    def __init__(self) -> None:
        self.other: Cell | None = None


def in_generation(obj: object, generation: int) -> bool:
    return any(o is obj for o in gc.get_objects(generation=generation))


@pytest.fixture
def collecting():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_what_a_pause_made_goes_to_the_oldest_generation(collecting):
    pause()
    assert not gc.isenabled()
    made = [Cell() for _ in range(10)]
    assert in_generation(made, 0)
    resume()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert in_generation(made, 2) and not in_generation(made, 0)


def test_cyclic_garbage_is_still_reclaimed(collecting):
    pause()
    a, b = Cell(), Cell()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    resume()
    assert gone() is not None  # a cycle: reference counting cannot free it
    gc.collect()
    assert gone() is None


def test_a_paused_collector_stays_paused_and_nothing_moves(collecting):
    gc.disable()
    pause()
    made = [Cell()]
    resume()
    assert not gc.isenabled()
    assert in_generation(made, 0)
    gc.enable()


def test_objects_the_program_froze_stay_frozen(collecting):
    kept = [Cell()]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        pause()
        made = [Cell()]
        resume()
        running = gc.isenabled()
        gc.disable()  # (a young collection while looking would move `made` along)
        assert gc.get_freeze_count() == frozen and running
        assert in_generation(made, 0)  # left young: promoting would have unfrozen `kept`
    finally:
        gc.enable()
        gc.unfreeze()
    assert in_generation(kept, 2)


def test_a_traced_and_compiled_graph_is_in_the_oldest_generation(collecting):
    def app(q):
        return [models("sim", f"{i}: {q}").text for i in range(3)]

    graph = trace_graph(app, ("q",), {})[0]
    assert gc.isenabled() and in_generation(graph.nodes[0], 2)
    optimized = run_passes(graph)[0]
    assert gc.isenabled() and in_generation(optimized.nodes[-1], 2)


def test_a_free_threaded_build_is_not_frozen(collecting, monkeypatch):
    from ember.ir import collector

    monkeypatch.setattr(collector, "_GENERATIONAL", False)  # no generations to skip
    pause()
    made = [Cell()]
    resume()
    running = gc.isenabled()
    gc.disable()  # (a young collection while looking would move `made` along)
    try:
        assert running and in_generation(made, 0)
    finally:
        gc.enable()


def test_overlapping_pauses_restart_the_collector_once_the_last_ends(collecting):
    pause()  # a trace in one thread
    pause()  # passes in another, begun while the collector was already off
    resume()  # the first ends: the other still runs
    assert not gc.isenabled()
    resume()
    assert gc.isenabled()


def test_traces_in_many_threads_leave_the_collector_running(collecting, racing):
    def app(q):
        return [models("sim", f"{i}: {q}").text for i in range(20)]

    def work():
        for _ in range(10):
            run_passes(trace_graph(app, ("q",), {})[0])

    racing(work, 4)  # a racy pause would leave the collector off
    assert gc.isenabled()
