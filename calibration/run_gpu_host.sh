#!/usr/bin/env bash
# Calibrate belusim on a GPU host and write the profile.
#
#   NAME=h200-host calibration/run_gpu_host.sh [OUT_DIR] [extra `belusim calibrate probe` options...]
#
# Writes OUT_DIR/$NAME.json and OUT_DIR/$NAME.log (NAME defaults to gpu-host).
# Installs nothing and needs no network: it uses the python3 on PATH, which must have numpy,
# scipy, pyyaml, typer and rich (PyTorch with CUDA and CuPy for the GPU probes; without them
# those probes are skipped and say why), plus a C compiler (cc/gcc/clang, or $CC) for the
# native CPU probe, which is built on first use into ~/.cache/belusim.
# It runs the probe as `python3 -m belusim.calibration`, which does not import the pydantic
# configuration layer, so the host does not need pydantic.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
out_dir="${1:-.}"
if [ $# -gt 0 ]; then shift; fi
name="${NAME:-gpu-host}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
log="$out_dir/$name.log"

export PYTHONUNBUFFERED=1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"

{
  echo "== belusim calibration on $(uname -n), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel: $(uname -r); CPUs: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  grep -m1 MemTotal /proc/meminfo || true
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current,memory.total --format=csv || echo "no nvidia-smi"
  ${CC:-cc} --version 2>/dev/null | head -1 || echo "no C compiler: CPU probes will fail"
  python3 - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for mod in ("numpy", "scipy", "yaml", "typer", "rich", "torch", "cupy", "pydantic"):
    try:
        m = importlib.import_module(mod)
        print(f"  {mod} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"  {mod}: not available ({type(e).__name__})")
try:
    import torch
    print("  cuda available:", torch.cuda.is_available(), "cuda runtime:", torch.version.cuda)
except Exception:
    pass
EOF
} 2>&1 | tee "$log"

start=$(date +%s)
set +e
python3 -m belusim.calibration probe --out "$out_dir/$name.json" --name "$name" "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e
echo "== probe exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$log"
exit "$rc"
