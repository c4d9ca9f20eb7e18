#!/bin/bash
# belusim validate on the lent H200: probe -> replay microbenchmark -> replays + predictions -> reports
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
B() { python3 -c "from belusim.cli.main import app; app()" "$@"; }
R=$OUT/r; mkdir -p $R
T0=$(date +%s)
left() { echo $(( ${BUDGET:-570} - ($(date +%s) - T0) )); }
{
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current,memory.total --format=csv
date -u
if [ -n "$CAL" ]; then  # CAL=profile: reuse a profile (e.g. the committed reports/validation/h200-val.json)
  cp $CAL $R/
else
  timeout 120 python3 -c "from belusim.cli.main import app; app()" calibrate probe --out $R/h200-val.json --name h200-val 2>&1 | grep -v "^\s*$" | tail -30
  CAL=$R/h200-val.json
  [ -f $CAL ] || CAL=h200-host
fi
echo "calibration: $CAL"
timeout 60 python3 -m belusim.replay.bench scenarios/validation/single.yaml --calibration $CAL --set engine.kv_blocks=12000 --out $R/bench-llama.json
for M in llama qwen; do
  if [ $M = llama ]; then S="--set model=llama-3.1-8b --set engine.kv_blocks=12000"; r70=34.4; r95=46.7; else S="--set model=qwen3-32b --set engine.kv_blocks=9000"; r70=15.2; r95=20.6; fi
  for sc in single closed16k; do
    L=$(left); [ $L -lt 40 ] && { echo "skip $M $sc: $L s left"; continue; }
    echo "== $M $sc $(date -u +%T)"
    timeout $(( L < 200 ? L - 10 : 200 )) python3 -c "from belusim.cli.main import app; app()" validate scenarios/validation/$sc.yaml --backend cuda --calibration $CAL $S --out $R --name $M-$sc -q
  done
  for p in 70:$r70 95:$r95; do
    L=$(left); [ $L -lt 40 ] && { echo "skip $M open4k $p: $L s left"; continue; }
    echo "== $M open4k-${p%%:*} $(date -u +%T)"
    timeout $(( L < 150 ? L - 10 : 150 )) python3 -c "from belusim.cli.main import app; app()" validate scenarios/validation/open4k.yaml --backend cuda --calibration $CAL $S --set "run.phases.hit.workload.arrival={process: poisson, rate_qps: ${p##*:}}" --out $R --name $M-open4k-p${p%%:*} -q
  done
done
L=$(left); [ $L -gt 60 ] && timeout $((L - 10)) python3 -m belusim.replay.bench scenarios/validation/single.yaml --calibration $CAL --set model=qwen3-32b --set engine.kv_blocks=9000 --out $R/bench-qwen.json
date -u
} 2>&1 | tee $OUT/log.txt
cd $OUT && tar czf results.tgz r && rm -rf r
