#!/usr/bin/env bash
# Set up .venv with the dev tools and run the whole test suite (CPU, offline). CI runs exactly this.
#   bash runtests.sh            all tests
#   bash runtests.sh -k engine  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh --dev
# tiny models: one thread per process avoids oversubscription (the torchrun tests start 2 processes)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
