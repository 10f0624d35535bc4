#!/usr/bin/env bash
# GPU check: edges/s of the jaxsdnn kernels and engine on the accelerator JAX finds.
# Installs nothing. Writes ${OUT:-bench_out}/gpu_bench.md.
#   bash scripts/gpu_bench.sh            # the real run (Graph Challenge 1024 x 120, 60000 images)
#   bash scripts/gpu_bench.sh --check    # dry run on CPU with tiny sizes
# Any other arguments go to scripts/gpu_bench.py (see its --help).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
OUT_DIR="${OUT:-bench_out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import jax, numpy, scipy; print("python", __import__("sys").version.split()[0], "jax", jax.__version__)'
exec "$PY" "$REPO/scripts/gpu_bench.py" --out "$OUT_DIR" "$@"
