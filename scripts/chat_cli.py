"""
Chat with a trained model in the terminal, the reply streamed token by token.

    python -m scripts.chat_cli                      # the largest SFT model, interactive
    python -m scripts.chat_cli -i base -p "The capital of France is"   # one-shot: print one reply and exit
    python -m scripts.chat_cli -i rl -g d12 -s 500 -t 0.8 -k 50 --max-tokens 512

Commands at the prompt: `clear` starts a new conversation, `quit` or `exit` (or Ctrl-D) leaves.
The conversation is kept as messages and rendered by the tokenizer each turn (tokenizer.render_for_completion), so
the prompt is exactly what training saw. The model's context is finite: when the conversation no longer fits, the
CLI says so and offers `clear` instead of failing. Runs on CUDA, MPS or CPU (autodetected, or --device-type).
"""

import argparse
import sys

from nanochat.checkpoint_manager import load_model
from nanochat.common import autodetect_device_type, compute_init
from nanochat.engine import Engine, parse_assistant_tokens

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Chat with a nanochat model in the terminal")
parser.add_argument("-i", "--source", type=str, default="sft", choices=["base", "mid", "sft", "rl"], help="stage")
parser.add_argument("-g", "--model-tag", type=str, default=None, help="model tag, e.g. d12 (default: the largest)")
parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last)")
parser.add_argument("-p", "--prompt", type=str, default=None, help="one-shot: answer this prompt and exit")
parser.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
parser.add_argument("-k", "--top-k", type=int, default=50, help="sample among the k likeliest tokens (0 = all)")
parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass (default: off)")
parser.add_argument("--max-tokens", type=int, default=256, help="max tokens per reply")
parser.add_argument("--seed", type=int, default=42, help="sampling seed of the first reply (+1 per reply)")
parser.add_argument("--device-type", type=str, default="", choices=["", "cuda", "mps", "cpu"], help="default: auto")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# Model

device_type = args.device_type or autodetect_device_type()
_, _, _, _, device = compute_init(device_type)
model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
engine = Engine(model, tokenizer)
sequence_len = model.config.sequence_len

# -----------------------------------------------------------------------------
# Chat


def render_prompt(messages):
    # render_for_completion wants the conversation to end with the assistant turn it should complete
    return tokenizer.render_for_completion({"messages": messages + [{"role": "assistant", "content": ""}]})


def stream_reply(prompt, seed):
    """Print the assistant's reply as it is generated; returns (content for the history, stop reason)."""
    reply, printed = [], ""
    for token_column, _ in engine.generate(
        prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=seed
    ):
        token = token_column[0]
        if token in engine.stop_token_ids:
            break
        reply.append(token)
        # print new text only once it is whole UTF-8: one character may span several tokens
        text = tokenizer.decode(reply)
        if not text.endswith("\ufffd"):
            print(text[len(printed) :], end="", flush=True)
            printed = text
    print(flush=True)
    return parse_assistant_tokens(tokenizer, reply), engine.stop_reasons[0]


def full_context_note(n_tokens):
    return (
        f"[the conversation is full: {n_tokens} tokens of a {sequence_len}-token context. Type 'clear' to start over]"
    )


if args.prompt is not None:
    prompt = render_prompt([{"role": "user", "content": args.prompt}])
    if len(prompt) >= sequence_len:
        print(full_context_note(len(prompt)), file=sys.stderr)
        sys.exit(1)
    _, stop_reason = stream_reply(prompt, args.seed)
    if stop_reason == "context":
        print(f"[the reply filled the model's {sequence_len}-token context]", file=sys.stderr)
    elif stop_reason == "max_tokens":  # the turn did not end by itself
        print(f"[reply cut at --max-tokens {args.max_tokens}]", file=sys.stderr)
    sys.exit(0)

print(f"nanochat: {args.source} model, {model.config.n_layer} layers, step {meta['step']}, on {device_type}")
print("Type 'clear' for a new conversation, 'quit' or 'exit' to leave.")
messages, seed = [], args.seed
while True:
    try:
        user_input = input("\nUser: ").strip()
    except (EOFError, KeyboardInterrupt):
        print()
        break
    if user_input.lower() in ("quit", "exit"):
        break
    if user_input.lower() == "clear":
        messages = []
        print("[new conversation]")
        continue
    if not user_input:
        continue
    prompt = render_prompt(messages + [{"role": "user", "content": user_input}])
    if len(prompt) >= sequence_len:
        print(full_context_note(len(prompt)))  # the message is not kept: the user can clear and ask again
        continue
    messages.append({"role": "user", "content": user_input})
    print("\nAssistant: ", end="", flush=True)
    try:
        content, stop_reason = stream_reply(prompt, seed)
    except KeyboardInterrupt:  # Ctrl-C stops this reply, not the program
        print("\n[interrupted]")
        messages.pop()
        continue
    seed += 1  # a fresh seed per reply, so that asking twice does not give the same sample
    messages.append({"role": "assistant", "content": content})
    if stop_reason == "context":
        print(f"[the reply filled the model's {sequence_len}-token context: type 'clear' to start over]")
    elif stop_reason == "max_tokens":
        print(f"[reply cut at --max-tokens {args.max_tokens}]")
