"""Peak memory of a long run: a million requests of a synthetic shared-prefix workload
(Poisson arrivals) on 64 instances with a CXL pool, as one JSON object.

    python benchmarks/million_requests.py [--requests 1000000] [--instances 64]

Prompts: 256 groups x 64 questions, a 2,048-token system prompt shared within a group and
a 512-token question; outputs 4-16 tokens (short, so that a million requests run in tens
of minutes rather than hours). The arrival rate keeps the cluster below saturation, so the
requests in flight stay bounded and memory measures what the simulator keeps per request
(its workload, its records) rather than a queue. Fields: requests, cpu_s, simulated_s,
peak_rss_mb (the process's high-water mark, workload building included) and
rss_kib_per_request (peak over requests, a ceiling on the per-request cost).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from belusim.config.scenario import resolve_scenario
from belusim.report.metrics import Recorder
from belusim.sim.cluster import simulate

from trace_replay import peak_rss_mb


def scenario(requests: int, instances: int, rate: float) -> dict:
    servers, gpus = (1, instances) if instances < 8 else (instances // 8, 8)
    return {
        "name": "million-requests",
        "model": "qwen3-32b",
        "gpu": "h100",
        "cluster": {"servers": servers, "gpus_per_server": gpus},
        "engine": {"max_num_batched_tokens": 2048},
        "systems": [{"name": "cxl-pool",
                     "kv": {"kind": "cxl-pool", "capacity_gb": 2000, "chunk_tokens": 16,
                            "copy_method": "gather-kernel", "coherence": "uncacheable", "interleave": True},
                     "router": {"policy": "least-loaded"}}],
        "workload": {"kind": "shared-prefix", "num_groups": 256, "prompts_per_group": 64,
                     "system_prompt_tokens": 2048, "question_tokens": 512, "num_requests": requests,
                     "output": {"mode": "uniform", "low": 4, "high": 16},
                     "arrival": {"process": "poisson", "rate_qps": rate}},
        "run": {"seed": 1, "max_sim_time_s": 1e9, "phases": [{"name": "main"}]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--rate-per-instance", type=float, default=2.0, help="requests per second per instance")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "million.yaml"
        path.write_text(yaml.safe_dump(scenario(args.requests, args.instances,
                                                args.rate_per_instance * args.instances)))
        sc, _ = resolve_scenario(path, [])
        c0 = time.process_time()
        run = simulate(sc, sc.system("cxl-pool"), Recorder())
        cpu = time.process_time() - c0
    rss = peak_rss_mb()
    s = run.summaries[0]
    print(json.dumps({
        "requests": args.requests, "instances": args.instances, "completed": s.get("completed"),
        "cpu_s": round(cpu, 1), "simulated_s": round(run.sim_s, 1), "events": run.events,
        "peak_rss_mb": round(rss, 1), "rss_kib_per_request": round(rss * 1024 / args.requests, 2),
        "mean_ttft_ms": s.get("mean_ttft_ms"), "tier_hit_ratio": s.get("tier_hit_ratio"),
    }))


if __name__ == "__main__":
    main()
