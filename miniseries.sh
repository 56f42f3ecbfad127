#!/usr/bin/env bash
# Train a family of base models, one per depth, each compute-optimal by the dial (--depth sets the width, batch,
# LRs, horizon...), and collect them into one CSV with plots of val bpb and CORE against training FLOPs.
#
#   bash miniseries.sh                         # GPU: d10..d20 (step 2), series name = today's date
#   bash miniseries.sh 12,16,20 myseries       # chosen depths and series name
#   bash miniseries.sh 2,3,4,5 cpu             # CPU (~1 h, 1 thread): small depths, shrunk context/batch/horizon
#   bash miniseries.sh 2,3,4,5,6 cpu           # CPU with d6 too (another ~80 min): dev/miniseries_cpu/
#   OUT=/tmp/ms bash miniseries.sh 2,3 try     # results elsewhere than dev/miniseries_<series>
#
# A rerun skips depths whose final checkpoint exists. Results: dev/miniseries_<series>/ (results.csv, fits.json,
# bpb_vs_flops.png, core_vs_flops.png, summary.md, train_d<N>.log, and commands.sh: every command this script ran,
# under a header with the date and git commit). Cost on 8xH100 (estimate from the public recipe's times):
# d10..d20 at ratio 12 ~ 4 h, ~$100.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh >/dev/null
source .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

CUDA=""
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    CUDA=1
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
fi
SERIES=${2:-$(date +%b%d | tr '[:upper:]' '[:lower:]')}
OUT=${OUT:-dev/miniseries_$SERIES}
mkdir -p "$OUT"
echo "miniseries '$SERIES': depths $DEPTHS -> $OUT"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'): bash miniseries.sh $*" \
    >> "$OUT/commands.sh"

run() {  # run CMD...: echo it into commands.sh (with the environment that matters), then run it
    echo "NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-~/.cache/nanochat} NANOCHAT_EVAL_BUNDLE=${NANOCHAT_EVAL_BUNDLE:-}" \
        "OMP_NUM_THREADS=$OMP_NUM_THREADS $*" \
        >> "$OUT/commands.sh"
    "$@"
}

# data and tokenizer, once (speedrun.sh leaves both behind): on GPU 170 shards (~17 GB of text, enough for d20 at
# ratio 12 without repeating; shards already there are kept) and speedrun's tokenizer; on CPU the embedded corpus
if [ -n "$CUDA" ]; then
    run python -m nanochat.dataset -n 170
fi
if [ ! -f "${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}/tokenizer/tokenizer.pkl" ]; then
    if [ -n "$CUDA" ]; then
        run python -m scripts.tok_train --max-chars 2000000000 --vocab-size 32768
    else
        run python -m scripts.tok_train --vocab-size 4096
    fi
fi
for d in ${DEPTHS//,/ }; do
    if python -m scripts.miniseries_report --series "$SERIES" --depths "$d" --out "$OUT" --check "$d"; then
        echo "d$d: already done, skipping"
        continue
    fi
    echo "=== d$d"
    # CORE runs once, at the end (--core-metric-every beyond the horizon), and lands in the checkpoint meta
    run $LAUNCH --depth="$d" --model-tag="${SERIES}_d$d" --run="${WANDB_RUN:-dummy}" $EXTRA 2>&1 | tee "$OUT/train_d$d.log"
done

run python -m scripts.miniseries_report --series "$SERIES" --depths "$DEPTHS" --out "$OUT"
