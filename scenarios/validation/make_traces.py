"""Write the request traces of the validation scenarios (fixed prompt lengths, distinct
prompts: every block key is unique to its request). Run: python scenarios/validation/make_traces.py"""

from pathlib import Path

import numpy as np

from belusim.workloads import RequestSpec, write_trace

BS = 16
here = Path(__file__).parent


def trace(name: str, lengths: list[int], outputs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reqs = [RequestSpec(i, n, outputs, rng.integers(1, 2**62, size=n // BS, dtype=np.int64), None, f"validation:{name}:{i}")
            for i, n in enumerate(lengths)]
    write_trace(reqs, here / f"{name}.jsonl", block_size=BS)


trace("single", [1024, 4096, 16384, 65536], 32, 1)
trace("closed16k", [16384] * 8, 64, 2)
trace("open4k", [4096] * 32, 32, 3)
