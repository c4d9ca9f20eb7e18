"""CPU per tier save through the transfer path alone: `KVPaths.save` (software stages, the
copy's launch, the flows on the fabric, the metadata RPC) on a fresh SimPy environment, with
the tier's bookkeeping and the engine left out.

    python benchmarks/save_path.py [--saves N] [--places K] [--chunks C] [--repeat R] [--set path=value]...

Each of K instance places (default 1: the fabric carries one save at a time; 0: every
instance) saves its share of N saves of C chunks one after another. Prints the least CPU
microseconds per save of R runs and the simulated seconds (equal across versions that
simulate the same).
"""

from __future__ import annotations

import argparse
import time
from array import array
from pathlib import Path

from belusim.sim.kernel import Environment

from belusim.config.scenario import resolve_scenario
from belusim.policy.request import Request
from belusim.policy.scheduler import Save
from belusim.transport.kvpath import KVPaths

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "traces" / "mooncake-conversation-cxl.yaml"


def run(sc, kv, saves: int, places: int, chunks: int) -> tuple[float, float]:
    """(CPU seconds, simulated seconds) of one run."""
    env = Environment()
    paths = KVPaths(env, sc, kv)
    c = paths._chunk_blocks
    keys = array("q", range(1, (chunks + 16) * c + 1))
    req = Request(1, len(keys) * sc.engine.block_size + 1, 1, keys, 0.0)
    todo = [Save(req, list(range(i % 16, i % 16 + chunks)),
                 [keys[(j + 1) * c - 1] for j in range(i % 16, i % 16 + chunks)]) for i in range(saves)]
    where = paths.instance_places[:places or None]

    def one_after_another(place, mine):
        for save in mine:
            yield from paths.save(place, save)

    for k, place in enumerate(where):
        env.process(one_after_another(place, todo[k::len(where)]))
    t0 = time.process_time()
    env.run()
    return time.process_time() - t0, env.now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(SCENARIO))
    ap.add_argument("--system", default="cxl-pool")
    ap.add_argument("--set", action="append", default=[], help="path=value overrides")
    ap.add_argument("--saves", type=int, default=20_000)
    ap.add_argument("--places", type=int, default=1, help="instances saving at once (0: all)")
    ap.add_argument("--chunks", type=int, default=128, help="tier chunks per save")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sc, _ = resolve_scenario(Path(args.scenario), args.set)
    kv = sc.system(args.system).kv
    runs = [run(sc, kv, args.saves, args.places, args.chunks) for _ in range(args.repeat)]
    cpu = min(r[0] for r in runs)
    print(f"{cpu / args.saves * 1e6:.2f} us CPU per save (least of {args.repeat}), "
          f"{runs[0][1]:.6f} s simulated")


if __name__ == "__main__":
    main()
