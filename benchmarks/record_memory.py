"""What a finished request leaves in memory: the bytes the Recorder keeps per record (its
row and its inter-token gaps), measured with tracemalloc over synthetic requests.

    python benchmarks/record_memory.py [--records 100000] [--outputs 10]

Each request has realistic float times, a TTFT split and `outputs - 1` gaps; the figure is
the growth of traced memory over the records, divided by their number (allocator slack of
the column arrays included, the Python process's own baseline not).
"""

from __future__ import annotations

import argparse
import json
import random
import tracemalloc

import numpy as np

from belusim.policy.request import Request, State
from belusim.report.metrics import Recorder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--outputs", type=int, default=10, help="output tokens per request")
    args = ap.parse_args()
    rng = random.Random(1)
    gaps = np.random.default_rng(1)
    tracemalloc.start()
    rec = Recorder()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(args.records):
        r = Request(i, 2560, args.outputs, [], rng.random() * 400, "main")
        r.state, r.instance, r.num_output = State.FINISHED, i % 64, args.outputs
        r.admitted = r.arrival + rng.random() * 0.01
        r.first_token = r.admitted + rng.random() * 0.05
        r.finish = r.first_token + rng.random()
        r.hbm_hit_tokens = r.tier_hit_tokens = 1024
        r.ttft_parts = [rng.random() for _ in r.ttft_parts]
        rec.record("cxl-pool", r, gaps.random(args.outputs - 1) if args.outputs > 1 else None)
    grown = tracemalloc.get_traced_memory()[0] - base
    print(json.dumps({"records": args.records, "gaps_per_record": max(0, args.outputs - 1),
                      "bytes_per_record": round(grown / args.records, 1)}))


if __name__ == "__main__":
    main()
