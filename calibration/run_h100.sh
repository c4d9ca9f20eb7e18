#!/usr/bin/env bash
# Calibrate belusim on an H100 host: run_gpu_host.sh with NAME=h100-host (see that script).
#
#   calibration/run_h100.sh [OUT_DIR] [extra `belusim calibrate probe` options...]
set -euo pipefail
NAME="${NAME:-h100-host}" exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run_gpu_host.sh" "$@"
