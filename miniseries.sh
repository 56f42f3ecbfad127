#!/usr/bin/env bash
# Train a family of base models, one per depth, each compute-optimal by the dial (--depth sets the width, batch,
# LRs, horizon...), and collect them into one CSV with plots of val bpb and CORE against training FLOPs.
#
#   bash miniseries.sh                         # GPU: d10..d20 (step 2), series name = today's date
#   bash miniseries.sh 12,16,20 myseries       # chosen depths and series name
#   bash miniseries.sh 2,3,4,5 cpu             # CPU (~25 min on 2 cores): small depths, shrunk context/batch/horizon
#
# A rerun skips depths whose final checkpoint exists. Results: dev/miniseries_<series>/ (results.csv,
# bpb_vs_flops.png, core_vs_flops.png, summary.md). Cost on 8xH100 (estimate from the public recipe's times):
# d10..d20 at ratio 12 ~ 4 h, ~$100.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh >/dev/null
source .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEPTHS=${1:-10,12,14,16,18,20}
    NPROC=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count())")}
    LAUNCH="torchrun --standalone --nproc_per_node=$NPROC -m scripts.base_train --"
    # full recipe: everything from the dial; CORE on all examples only at the end
    EXTRA="--core-metric-every=999999 --core-metric-max-per-task=-1 --sample-every=-1"
else
    DEPTHS=${1:-2,3,4,5}
    LAUNCH="python -m scripts.base_train"
    # CPU: the dial still sets width, heads, LRs, weight decay and the horizon as a tokens:params ratio, but 2 cores
    # cannot afford the GPU ratio (12): RATIO defaults to 0.2, the context and batch are shrunk (the dial's batch is
    # 2^18+ tokens), the head dim is 64 so widths step 128/192/256/320 instead of jumping by 128, and CORE uses the
    # shipped fixture bundle. It shows the machinery (CSV, fits, plots), not GPU-grade scaling laws.
    EXTRA="--head-dim=64 --max-seq-len=256 --device-batch-size=16 --total-batch-size=4096 --window-pattern=L --warmup-steps=10 \
--eval-tokens=131072 --eval-every=-1 --sample-every=-1 --core-metric-every=999999 --core-metric-max-per-task=-1 \
--target-param-data-ratio=${RATIO:-0.2}"
    export NANOCHAT_EVAL_BUNDLE=${NANOCHAT_EVAL_BUNDLE:-fixture}
    if [ ! -f "${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}/tokenizer/tokenizer.pkl" ]; then
        python -m scripts.tok_train --vocab-size 4096
    fi
fi
SERIES=${2:-$(date +%b%d | tr '[:upper:]' '[:lower:]')}
OUT=dev/miniseries_$SERIES
mkdir -p "$OUT"
echo "miniseries '$SERIES': depths $DEPTHS"

for d in ${DEPTHS//,/ }; do
    if python -m scripts.miniseries_report --series "$SERIES" --depths "$d" --out "$OUT" --check "$d"; then
        echo "d$d: already done, skipping"
        continue
    fi
    echo "=== d$d"
    # CORE runs once, at the end (--core-metric-every beyond the horizon), and lands in the checkpoint meta
    $LAUNCH --depth="$d" --model-tag="${SERIES}_d$d" --run="${WANDB_RUN:-dummy}" $EXTRA 2>&1 | tee "$OUT/train_d$d.log"
done

python -m scripts.miniseries_report --series "$SERIES" --depths "$DEPTHS" --out "$OUT"
