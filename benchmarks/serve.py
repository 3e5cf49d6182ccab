"""Run a loopback FakeOpenAI in its own process (so the server's Python does not share
the benchmark's GIL). Prints the URL, then serves until stdin closes.

    python benchmarks/serve.py --latency 0.2
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from servers import FakeOpenAI  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    ns = parser.parse_args()
    with FakeOpenAI(latency=ns.latency) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin


if __name__ == "__main__":
    main()
