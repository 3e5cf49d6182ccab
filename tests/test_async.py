"""The async API against eager async Python: the caller's event loop, cancellation,
results a jitted function returns in containers, and the process's exit."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from servers import openai_server  # noqa: F401

import ember
from ember import jit, models, vmap
from ember.providers import sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(code: str, *flags: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *flags, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT}, **popen)


def _finish(child: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The child's output, once it exits (killed if it has not within ``timeout``)."""
    try:
        return child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise


def test_an_unplannable_async_call_leaves_the_callers_loop_free():
    """Once jit gives up planning (a timestamp in every prompt), the check run waited
    for each answer by blocking the thread: the caller's event loop froze, and
    concurrent calls ran one after another."""
    gate = threading.Event()

    async def held(request):  # answers once the caller's loop has run another task
        return "released" if await asyncio.to_thread(gate.wait, 5) else "blocked"

    ember.providers.register("gated", held)
    try:
        async def ask(q):
            answer = await ember.amodels("gated/m", f"[{time.time_ns()}] {q}")
            return answer.text

        fast = jit(ask)

        async def learn():
            gate.set()
            for _ in range(5):
                await fast("learn")
                if fast.entry("x").changing:
                    return True
            return False

        assert asyncio.run(learn())
        gate.clear()

        async def release():
            await asyncio.sleep(0.05)
            gate.set()

        async def both():
            return await asyncio.gather(fast("q"), release())

        assert asyncio.run(both())[0] == "released"
    finally:
        ember.providers._custom.pop("gated", None)
        ember.providers.reset()


@dataclasses.dataclass
class Found:
    item: str
    answer: object


def test_a_response_returned_in_a_dataclass_is_fetched_during_the_call():
    """Only lists, tuples and dicts were searched for answers: one in a dataclass was
    taken for dead, and sent one at a time as the caller read each (no concurrency,
    last_run.requests 0, an async caller's loop blocked on the read)."""
    def find(x):
        return Found(x, models("sim", f"Summarize {x}"))

    xs = [f"doc {i}" for i in range(4)]
    eager = [find(x).answer.text for x in xs]
    sim.reset_stats()
    mapped = vmap(find)
    outs = mapped(xs)
    assert mapped.last_run.completions == 4
    made = sim.stats().completions
    assert [o.answer.text for o in outs] == eager and [o.item for o in outs] == xs
    assert sim.stats().completions == made == 4  # reading sends nothing more
    fast = jit(find)
    assert fast("doc 9").answer.text == find("doc 9").answer.text
    assert fast.last_run.completions == 1


def test_sys_exit_on_a_placeholder_while_planning_is_not_the_programs():
    """`if answer.text: sys.exit(...)` while planning: the placeholder's text is never
    empty, so jit exited where the real (empty) answer lets eager Python return."""
    async def empty(request):
        return ""

    ember.providers.register("quiet", empty)
    try:
        def check(x):
            answer = models("quiet/m", f"Any problem with {x}?")
            if answer.text:
                sys.exit("problem: " + answer.text)
            return "all good"

        assert jit(check)("plan") == check("plan") == "all good"
    finally:
        ember.providers._custom.pop("quiet", None)
        ember.providers.reset()


def test_cancelling_an_async_map_cancels_its_shared_call_on_embers_loop():
    """The call a map shares (hoisted) was cancelled from the caller's thread: under -X
    dev a RuntimeError ('Non-thread-safe operation') instead of CancelledError, and
    the shared request went on to be answered."""
    child = _script("""
        import asyncio, ember
        from ember import vmap
        ember.providers.sim.configure(latency=1.0)

        async def f(x):
            shared = await ember.amodels("sim", "shared context", temperature=0)
            return (await ember.amodels("sim", f"{x} given {shared.text}")).text

        async def main():
            task = asyncio.ensure_future(vmap(f)(["a", "b", "c"]))
            await asyncio.sleep(0.3)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                print("cancelled")
            except BaseException as exc:
                print("raised", type(exc).__name__)
            await asyncio.sleep(1.0)
            print("answered", ember.providers.sim.stats().completions)

        asyncio.run(main())
    """, "-X", "dev")
    out, err = _finish(child, 60)
    assert out.split() == ["cancelled", "answered", "0"], err


def test_exit_while_a_daemon_thread_is_between_calls(openai_server):
    """The exit handler retired the provider but left it registered: the daemon
    thread's next call went from the retired instance to itself, a RecursionError."""
    openai_server.latency = lambda rec: 0.0 if "warm" in rec.raw.decode() else 0.6
    child = _script("""
        import threading, time, ember
        from ember import models
        models("openai/gpt-4o-mini", "warm up")

        def two_steps():
            try:
                a = models("openai/gpt-4o-mini", "step one")
                models("openai/gpt-4o-mini", "step two after " + a.text)
                print("thread done", flush=True)
            except BaseException as exc:
                print("thread got", type(exc).__name__, flush=True)

        threading.Thread(target=two_steps, daemon=True).start()
        time.sleep(0.2)
        print("main exits", flush=True)
    """)
    out, err = _finish(child, 60)
    assert "RecursionError" not in out + err, out + err
    assert out.startswith("main exits") and child.returncode == 0, out + err


def test_ctrl_c_in_a_map_then_exit_leaves_no_task_behind(openai_server):
    """Ember's exit handler stopped its loop while the interrupted map was still
    unwinding: 'Task was destroyed but it is pending!' and a ContextVar ValueError
    after the KeyboardInterrupt."""
    openai_server.latency = 5.0
    child = _script("""
        import ember
        from ember import vmap, models

        def f(x):
            answers = [models("openai/gpt-4o-mini", f"{x} {i}") for i in range(3)]
            return models("openai/gpt-4o-mini", " | ".join(a.text for a in answers)).text

        print("mapping", flush=True)
        vmap(f)(["a", "b"])
    """, "-X", "dev")
    assert child.stdout.readline().strip() == "mapping"
    deadline = time.monotonic() + 20
    while len(openai_server.requests) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)  # (every first-round call in flight)
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    _, err = _finish(child, 30)
    assert "KeyboardInterrupt" in err
    assert "Task was destroyed" not in err and "different Context" not in err, err


def test_an_async_ensemble_cancelled_at_once_leaves_no_coroutine_unawaited():
    child = _script("""
        import asyncio, gc, ember
        from ember import ensemble
        ember.providers.sim.configure(latency=0.5)

        async def a(x): return (await ember.amodels("sim", f"a {x}")).text
        async def b(x): return (await ember.amodels("sim", f"b {x}")).text

        async def main():
            panel = ensemble(a, b)
            for delay in (0, 0.001):
                task = asyncio.ensure_future(panel(f"q{delay}"))
                await asyncio.sleep(delay)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                gc.collect()
            print("done")

        asyncio.run(main())
    """, "-X", "dev")
    out, err = _finish(child, 60)
    assert out.strip() == "done" and "never awaited" not in err, err


def test_timeout_limits_an_async_functions_own_awaits_under_jit_and_vmap():
    """ember.timeout cancels an async function as a whole; under jit (and so in every
    async vmap) its own awaits, a slow tool call, ran unlimited: a value after 2.1 s
    where eager Python raised TimeoutError at 0.3 s."""
    async def tool(q):
        await asyncio.sleep(3.0)
        return f"results for {q}"

    async def agent(q):
        plan = await ember.amodels("sim", f"plan {q}")
        found = await tool(plan.text[:10])
        return (await ember.amodels("sim", f"answer from {found}")).text

    bounded = ember.timeout(agent, 0.2)

    async def outcome(call):
        try:
            return await call
        except TimeoutError as exc:
            return type(exc).__name__

    async def all_ways():
        return [await outcome(bounded("q")), await outcome(jit(bounded)("q")),
                await outcome(vmap(bounded, return_exceptions=True)(["q"]))]

    eager, jitted, mapped = asyncio.run(all_ways())
    assert eager == jitted == "TimeoutError"
    assert isinstance(mapped[0], TimeoutError)


def test_ctrl_c_stops_a_maps_elements_running_in_check_threads():
    """Elements whose Python runs in Ember's check threads (a timestamp in a prompt: no
    plan holds) went on after Ctrl-C: 8 more requests sent, and the exit waited for
    them (20 s at a 10 s latency)."""
    child = _script("""
        import os, signal, threading, time, ember
        from ember import models, vmap
        from ember.providers import sim

        def stamp(x):
            return models("sim", f"{time.time()} {x}").text + models("sim", f"{x} again").text

        mapped = vmap(stamp)
        mapped(["a", "b"]); mapped(["a", "b"])  # learn: no plan can be trusted
        sim.configure(latency=30)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        base = sim.stats().requests
        try:
            mapped([f"item {i}" for i in range(8)])
        except KeyboardInterrupt:
            sent = sim.stats().requests - base
            import atexit
            atexit.register(lambda: print("sent", sent, "in all", sim.stats().requests - base,
                                          flush=True))
    """)
    out, err = _finish(child, 25)  # (the old code waited ~60 s to exit)
    words = out.split()
    assert words[0] == "sent" and words[1] == words[4] == "8", out + err


@dataclasses.dataclass(eq=False)
class Thought:
    text: str
    parent: "Thought | None" = None
    children: list = dataclasses.field(default_factory=list)


def test_a_returned_tree_of_dataclasses_that_points_back_is_walked_once():
    """The walk for answers in returned dataclasses had no guard: a tree whose nodes
    know their parent recursed until RecursionError."""
    def tot(q):
        root = Thought(q)
        for i in range(2):
            root.children.append(Thought(models("sim", f"Idea {i} for {q}").text, root))
        return root

    eager = tot("x")
    out = jit(tot)("x")
    assert [c.text for c in out.children] == [c.text for c in eager.children]
    assert all(c.parent is out for c in out.children)
