#!/usr/bin/env bash
# The full GPU pipeline, from raw text to a chat model with its report card, as a readable recipe.
#
#   bash speedrun.sh                                  # one node, all its GPUs
#   NPROC=4 bash speedrun.sh                          # fewer GPUs: same results, more gradient accumulation
#   WANDB_RUN=speedrun bash speedrun.sh               # log to wandb
#   RL=1 bash speedrun.sh                             # also run the optional RL stage on GSM8K
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash speedrun.sh   # multi-node: run on every node with its rank
#
# Times and costs below are ESTIMATES for one 8xH100 node at ~$24/h, scaled from the public nanochat recipe's
# published numbers for the same depth and token budget (d24, 8 tokens per scaling parameter, ~2.8e19 FLOPs);
# they are not measured with this code yet (see dev/LOG.md for what has been measured). On CPU use runcpu.sh.
set -euo pipefail
cd "$(dirname "$0")"

# --- hardware check: refuse clearly instead of crawling on a CPU
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "speedrun.sh needs NVIDIA GPUs (nvidia-smi found none). On a CPU, run: bash runcpu.sh" >&2
    exit 1
fi
NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
NNODES=${NNODES:-1}
export OMP_NUM_THREADS=1
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
WANDB_RUN=${WANDB_RUN:-dummy}
if [ "$NNODES" -gt 1 ]; then
    TORCHRUN="torchrun --nnodes=$NNODES --node_rank=${NODE_RANK:?set NODE_RANK} --master_addr=${MASTER_ADDR:?set MASTER_ADDR} --master_port=${MASTER_PORT:-29500} --nproc_per_node=$NPROC"
else
    TORCHRUN="torchrun --standalone --nproc_per_node=$NPROC"
fi
echo "speedrun: $NNODES node(s) x $NPROC GPU(s), base dir $NANOCHAT_BASE_DIR, wandb run '$WANDB_RUN'"

# --- environment (~1 min): .venv with a CUDA torch (see README "Install")
bash setup.sh
source .venv/bin/activate
python -m nanochat.report reset

# --- data and tokenizer (~5 min, $2): 8 shards (~2B chars) for the tokenizer now, the rest in the background
#     (170 shards ~ 17 GB of text: enough for d24 at ratio 8 without repeating data)
python -m nanochat.dataset -n 8
python -m nanochat.dataset -n 170 &
DATASET_PID=$!
python -m scripts.tok_train --max-chars 2000000000 --vocab-size 32768
python -m scripts.tok_eval
echo "waiting for the shard download to finish..."
wait $DATASET_PID

# --- pretraining (~2 h, ~$48 estimated in bf16): d24 at 8 tokens per scaling parameter is the public recipe's
#     fastest way to GPT-2 CORE (0.2565); CORE runs at the end on all examples
$TORCHRUN -m scripts.base_train -- --depth=24 --target-param-data-ratio=8 --core-metric-every=999999 \
    --core-metric-max-per-task=-1 --run="$WANDB_RUN"
# --- base evaluation (~5 min, $2): CORE on the full bundle, train/val bpb, samples
$TORCHRUN -m scripts.base_eval

# --- midtraining (~10 min, $4): conversations, multiple choice, calculator tool use, identity
$TORCHRUN -m scripts.mid_train -- --run="$WANDB_RUN"
$TORCHRUN -m scripts.chat_eval -- -i mid

# --- supervised fine-tuning (~10 min, $4), then chat evaluation (~10 min, $4)
$TORCHRUN -m scripts.chat_sft -- --run="$WANDB_RUN"
$TORCHRUN -m scripts.chat_eval -- -i sft

# --- optional RL on GSM8K (~1 h, $24)
if [ "${RL:-0}" = 1 ]; then
    $TORCHRUN -m scripts.chat_rl -- --run="$WANDB_RUN"
    $TORCHRUN -m scripts.chat_eval -- -i rl -a GSM8K
fi

# --- share it: a HuggingFace transformers folder (safetensors, tokenizer, chat template, model card), checked against
#     our model on export; one CPU process holding two fp32 copies of the weights (~11 GB RAM at d24; not timed yet)
STAGE=$([ "${RL:-0}" = 1 ] && echo rl || echo sft)
if [ "${NODE_RANK:-0}" = 0 ]; then
    python -m scripts.export_hf --source "$STAGE" --out "$NANOCHAT_BASE_DIR/hf/nanochat-d24-$STAGE"
fi

# --- the report card (report.md), then talk to the model
python -m nanochat.report generate
echo "done. Chat:  python -m scripts.chat_cli   or   python -m scripts.chat_web  (then open http://127.0.0.1:8000)"
echo "HuggingFace folder with its model card: $NANOCHAT_BASE_DIR/hf/nanochat-d24-$STAGE"
