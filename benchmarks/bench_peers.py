"""Side by side on one loopback OpenAI-compatible server (tests/servers.py's FakeOpenAI
in its own process, 100 ms per request), in one run:

- Ember: ``jit`` for the fan-out, ``vmap(batch_size=C)`` for the batch;
- hand-written ``asyncio.gather`` with the official ``openai.AsyncOpenAI`` client (the
  expert floor; a semaphore bounds the batch);
- plain sequential Python with the official sync ``openai.OpenAI`` client;
- LangChain (``langchain-openai``'s ``ChatOpenAI``: ``RunnableParallel`` for the fan-out,
  ``.batch(max_concurrency=C)`` for the batch);
- DSPy (``dspy.LM`` called by a one-line module under ``dspy.Parallel``), its cache off.

Peers come from the ``bench`` extra (``pip install -e '.[bench]'``); a peer that is not
installed is skipped. Every implementation sends the same prompts with
``max_tokens=16, temperature=0`` and must return the same texts.

Workloads: an ensemble of 8 experts and a judge (bound 2 x L), and a batch of 100
prompts with 10 in flight (bound ceil(100 / 10) x L). Targets: Ember within 1.05x of
hand-written asyncio, and ahead of every framework peer.

    pytest benchmarks/bench_peers.py -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Callable

import pytest

# LiteLLM (under DSPy) would fetch its price map from the network at import
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from conftest import figure, report, start_server, stop_server
from servers import OPENAI_KEY

import ember
from ember import jit, models, vmap

LATENCY = 0.1
MODEL = "gpt-4o-mini"
PARAMS = {"max_tokens": 16, "temperature": 0}
EXPERTS = 8
N, C = 100, 10
ROUNDS = 3
QUESTION = "should we ship on Friday"
_walls: dict[tuple[str, str], float] = {}


def expert_prompts(q: str) -> list[str]:
    return [f"Expert {i}, answer briefly: {q}" for i in range(EXPERTS)]


def judge_prompt(texts: list[str]) -> str:
    return "Judge the best answer:\n" + "\n".join(texts)


BATCH = [f"Classify document {i}" for i in range(N)]


@pytest.fixture(scope="module")
def server():
    from ember import providers

    saved = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "HTTP_PROXY",
                                            "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                                            "https_proxy")}
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    proc, url = start_server(LATENCY)
    os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"] = url, OPENAI_KEY
    providers.reset()
    yield url
    stop_server(proc)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    providers.reset()


def _median_wall(fn: Callable[[], object], rounds: int = ROUNDS) -> tuple[float, object]:
    fn()  # warm: imports, connections, traces
    walls, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - start)
    return sorted(walls)[len(walls) // 2], result


# ---- the implementations ---------------------------------------------------------------
def ember_fanout() -> Callable[[], object]:
    @jit
    def panel(q: str):
        views = [models(MODEL, p, **PARAMS).text for p in expert_prompts(q)]
        return models(MODEL, judge_prompt(views), **PARAMS).text

    return lambda: panel(QUESTION)


def ember_batch() -> Callable[[], object]:
    mapped = vmap(lambda p: models(MODEL, p, **PARAMS).text, batch_size=C)
    return lambda: mapped(BATCH)


def _async_client(url: str):
    import openai

    return openai.AsyncOpenAI(base_url=url, api_key=OPENAI_KEY, max_retries=0)


def asyncio_fanout(url: str) -> Callable[[], object]:
    client = _async_client(url)
    loop = asyncio.new_event_loop()

    async def ask(prompt: str) -> str:
        r = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], **PARAMS)
        return r.choices[0].message.content

    async def panel(q: str) -> str:
        views = await asyncio.gather(*(ask(p) for p in expert_prompts(q)))
        return await ask(judge_prompt(list(views)))

    return lambda: loop.run_until_complete(panel(QUESTION))


def asyncio_batch(url: str) -> Callable[[], object]:
    client = _async_client(url)
    loop = asyncio.new_event_loop()

    async def run() -> list[str]:
        gate = asyncio.Semaphore(C)

        async def ask(prompt: str) -> str:
            async with gate:
                r = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], **PARAMS)
                return r.choices[0].message.content

        return list(await asyncio.gather(*(ask(p) for p in BATCH)))

    return lambda: loop.run_until_complete(run())


def _sync_ask(url: str) -> Callable[[str], str]:
    import openai

    client = openai.OpenAI(base_url=url, api_key=OPENAI_KEY, max_retries=0)

    def ask(prompt: str) -> str:
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], **PARAMS)
        return r.choices[0].message.content
    return ask


def sequential_fanout(url: str) -> Callable[[], object]:
    ask = _sync_ask(url)
    return lambda: ask(judge_prompt([ask(p) for p in expert_prompts(QUESTION)]))


def sequential_batch(url: str) -> Callable[[], object]:
    ask = _sync_ask(url)
    return lambda: [ask(p) for p in BATCH]


def _langchain_llm(url: str):
    pytest.importorskip("langchain_openai", reason="LangChain peer: pip install -e '.[bench]'")
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=url, api_key=OPENAI_KEY, max_retries=0, **PARAMS)


def langchain_fanout(url: str) -> Callable[[], object]:
    llm = _langchain_llm(url)
    from langchain_core.runnables import RunnableLambda, RunnableParallel

    branches = {f"e{i}": RunnableLambda(lambda q, p=p: p) | llm
                for i, p in enumerate(expert_prompts(QUESTION))}
    experts = RunnableParallel(branches)

    def run() -> str:
        views = experts.invoke(QUESTION)
        texts = [views[f"e{i}"].content for i in range(EXPERTS)]
        return llm.invoke(judge_prompt(texts)).content
    return run


def langchain_batch(url: str) -> Callable[[], object]:
    llm = _langchain_llm(url)
    return lambda: [m.content for m in llm.batch(BATCH, config={"max_concurrency": C})]


def _dspy(url: str):
    dspy = pytest.importorskip("dspy", reason="DSPy peer: pip install -e '.[bench]'")
    import logging

    logging.getLogger("dspy").setLevel(logging.ERROR)  # "truncated at max_tokens" notes
    lm = dspy.LM(f"openai/{MODEL}", api_base=url, api_key=OPENAI_KEY, cache=False,
                 num_retries=0, **PARAMS)

    class Ask(dspy.Module):
        def forward(self, prompt: str) -> str:
            return lm(prompt)[0]
    return dspy, lm, Ask()


def dspy_fanout(url: str) -> Callable[[], object]:
    dspy, lm, ask = _dspy(url)
    parallel = dspy.Parallel(num_threads=EXPERTS, disable_progress_bar=True)

    def run() -> str:
        views = parallel([(ask, {"prompt": p}) for p in expert_prompts(QUESTION)])
        return lm(judge_prompt(views))[0]
    return run


def dspy_batch(url: str) -> Callable[[], object]:
    dspy, _, ask = _dspy(url)
    parallel = dspy.Parallel(num_threads=C, disable_progress_bar=True)
    return lambda: parallel([(ask, {"prompt": p}) for p in BATCH])


WORKLOADS = {
    "fan-out 8 + judge": (2 * LATENCY, {
        "ember jit": lambda url: ember_fanout(),
        "asyncio.gather": asyncio_fanout,
        "sequential": sequential_fanout,
        "LangChain RunnableParallel": langchain_fanout,
        "DSPy Parallel": dspy_fanout,
    }),
    f"batch N={N} C={C}": (math.ceil(N / C) * LATENCY, {
        "ember vmap": lambda url: ember_batch(),
        "asyncio.gather": asyncio_batch,
        "sequential": sequential_batch,
        "LangChain .batch": langchain_batch,
        "DSPy Parallel": dspy_batch,
    }),
}
_first_result: dict[str, object] = {}  # every implementation must return Ember's texts
CASES = [(w, impl) for w, (_, impls) in WORKLOADS.items() for impl in impls]


@pytest.mark.parametrize("workload,impl", CASES, ids=[f"{w}-{i}" for w, i in CASES])
def test_side_by_side(server, workload, impl):
    bound, impls = WORKLOADS[workload]
    run = impls[impl](server)
    rounds = 1 if impl == "sequential" else ROUNDS
    wall, result = _median_wall(run, rounds)
    expected = _first_result.setdefault(workload, result)
    assert result == expected, f"{impl} returned something else than {next(iter(impls))}"
    if workload.startswith("batch"):
        assert result[0] == f"echo: {BATCH[0]}"
    _walls[(workload, impl)] = wall
    row = f"{workload}, L={LATENCY * 1e3:.0f}ms"
    report(f"{row}: {impl} wall", wall, bound, table=(row, f"{impl} vs bound"))
    figure(f"{row}: {impl} wall (ms)", wall * 1e3, "ms", table=(row, f"{impl} ms"))
    ember_impl = next(i for i in impls if i.startswith("ember"))
    mine = _walls.get((workload, ember_impl))
    if impl == "asyncio.gather" and mine is not None:
        report(f"{row}: {ember_impl} / asyncio.gather", mine, wall, unit="s", target=1.05,
               table=(row, "ember / asyncio"))
    if impl not in (ember_impl, "asyncio.gather", "sequential") and mine is not None:
        report(f"{row}: {ember_impl} / {impl}", mine, wall, unit="s", target=1.0,
               table=(row, f"ember / {impl.split()[0]}"))


def test_ember_runs_first():
    """The parametrization runs Ember before the others in each workload, so the ratios
    above have their numerator; this checks the order did not change."""
    for workload, (_, impls) in WORKLOADS.items():
        assert next(iter(impls)).startswith("ember")
    ember.__version__  # noqa: B018
