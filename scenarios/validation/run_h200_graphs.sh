#!/bin/bash
# The replay with piecewise CUDA graphs on the lent H200: the replay's GPU tests, the step
# microbenchmark (chunk and mixed steps eager and as piecewise graphs), then the replays that
# fit in BUDGET seconds, with the committed profile (CAL, default reports/validation/h200-val.json)
# and the rates of run_h200.sh. Results under $OUT (results.tgz, log.txt).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
CAL=${CAL:-reports/validation/h200-val.json}
R=$OUT/r; mkdir -p $R
T0=$(date +%s)
left() { echo $(( ${BUDGET:-570} - ($(date +%s) - T0) )); }
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
date -u
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_replay.py -k "piecewise or paged" -rs; echo "gpu tests rc=$?"
L=$(left); timeout $(( L < 70 ? L : 70 )) python3 -m belusim.replay.bench scenarios/validation/single.yaml --calibration $CAL --set engine.kv_blocks=12000 --out $R/bench-llama.json
LL="--set model=llama-3.1-8b --set engine.kv_blocks=12000"; QQ="--set model=qwen3-32b --set engine.kv_blocks=9000"
while read -r name sc set rate; do
  L=$(left); [ $L -lt 35 ] && { echo "skip $name: $L s left"; continue; }
  echo "== $name $(date -u +%T)"
  arr=(); [ "$rate" != - ] && arr=(--set "run.phases.hit.workload.arrival={process: poisson, rate_qps: $rate}")
  timeout $(( L < 150 ? L - 5 : 150 )) python3 -c "from belusim.cli.main import app; app()" validate scenarios/validation/$sc.yaml --backend cuda --calibration $CAL ${!set} "${arr[@]}" --out $R --name $name -q
done <<'LIST'
llama-single single LL -
llama-open4k-p70 open4k LL 34.4
llama-open4k-p95 open4k LL 46.7
qwen-open4k-p70 open4k QQ 15.2
LIST
date -u
} 2>&1 | tee $OUT/log.txt
cd $OUT && tar czf results.tgz r && rm -rf r
