"""
Export a checkpoint as a HuggingFace transformers directory (weights, tokenizer, chat template, generation config,
model card), checked against our model before it is called done. See nanochat/hf_export.py for what is written and
when the export uses transformers' native `nanochat` type or custom code (trust_remote_code=True).

    python -m scripts.export_hf --source sft --out hf/nanochat-d20-sft
    python -m scripts.export_hf --source base --model-tag d12 --step 5000 --out hf/d12-base

Runs on CPU in fp32 and holds two copies of the model while it checks the export (ours and the reloaded one):
RAM ~ 2 x 4 bytes x parameters, e.g. d12 (286M parameters, value embeddings included) ~2.3 GB, d20 (897M) ~7.2 GB.
Then, offline:
    AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)   # trust_remote_code: custom exports only
    AutoTokenizer.from_pretrained(OUT, trust_remote_code=True)          # or False: the tokenizer needs no code
    pipeline("text-generation", model=OUT, trust_remote_code=True)
"""

import argparse

from nanochat.hf_export import export_checkpoint
from nanochat.report import get_report

parser = argparse.ArgumentParser(description="Export a nanochat checkpoint for HuggingFace transformers")
parser.add_argument("--source", type=str, default="sft", choices=["base", "mid", "sft", "rl"], help="stage")
parser.add_argument("--out", type=str, required=True, help="output directory (created; files in it are replaced)")
parser.add_argument("--model-tag", type=str, default=None, help="model tag, e.g. d20 (default: the largest)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
args = parser.parse_args()

info = export_checkpoint(args.source, args.out, model_tag=args.model_tag, step=args.step)
get_report().log(
    section="HuggingFace export",
    data=[
        {k: info[k] for k in ("source", "model_tag", "step", "out_dir", "kind", "transformers_version")},
        {"missing native features": "; ".join(info["reasons"]) or "none"},
        {k: info[k] for k in ("max_abs_logit_diff", "check_tokens", "max_abs_decode_logit_diff", "check_decode_steps")},
    ],
)
