#!/bin/bash
# belusim validate at tensor parallel 2 on a host with two H200s: GPU tests of the TP replay ->
# probe (all-reduce included) -> closed16k at TP 2 and TP 1 (same machine, same profile)
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B() { python3 -c "from belusim.cli.main import app; app()" "$@"; }
R=$OUT/r; mkdir -p $R
T0=$(date +%s)
left() { echo $(( ${BUDGET:-540} - ($(date +%s) - T0) )); }
Q="--set model=qwen3-32b --set engine.kv_blocks=9000"
TP2="--set cluster.gpus_per_server=2 --set cluster.tensor_parallel=2"
{
nvidia-smi --query-gpu=index,name,driver_version,pcie.link.gen.current,pcie.link.width.current,memory.total --format=csv
nvidia-smi topo -m
date -u
timeout 200 python3 -m pytest -q -x tests/test_replay_tp.py -k cuda -p no:cacheprovider 2>&1 | tail -15
echo "== probe $(date -u +%T)"
timeout 150 python3 -c "from belusim.cli.main import app; app()" calibrate probe --out $R/h200x2-val.json --name h200x2-val 2>&1 | grep -v "^\s*$" | tail -12
CAL=$R/h200x2-val.json
[ -f $CAL ] || { echo "no profile"; CAL=reports/validation/h200-val.json; }
python3 -c "import json,sys; p=json.load(open('$CAL')); ar=p['measurements'].get('gpu',{}).get('all_reduce',{}); print(json.dumps({k:v for k,v in ar.items() if k!='rows'})); [print(r) for r in ar.get('rows',[])]; [print(k, v['value']) for k,v in p['fitted'].items() if k.startswith('interconnect')]"
for run in "qwen-closed16k-tp2:$TP2" "qwen-closed16k-tp1:"; do
  L=$(left); [ $L -lt 60 ] && { echo "skip ${run%%:*}: $L s left"; continue; }
  echo "== ${run%%:*} $(date -u +%T)"
  timeout $(( L < 200 ? L - 10 : 200 )) python3 -c "from belusim.cli.main import app; app()" validate scenarios/validation/closed16k.yaml --backend cuda --calibration $CAL $Q ${run#*:} --out $R --name ${run%%:*} -q
done
L=$(left); [ $L -gt 100 ] && { echo "== llama-closed16k-tp2 $(date -u +%T)"; timeout $((L - 10)) python3 -c "from belusim.cli.main import app; app()" validate scenarios/validation/closed16k.yaml --backend cuda --calibration $CAL --set engine.kv_blocks=12000 $TP2 --out $R --name llama-closed16k-tp2 -q; }
date -u
} 2>&1 | tee $OUT/log.txt
cd $OUT && tar czf results.tgz r && rm -rf r
