"""
Export a nanochat checkpoint as a HuggingFace transformers directory: weights, tokenizer, chat template, generation
config and model card, loadable offline with AutoModelForCausalLM / AutoTokenizer / pipeline("text-generation").

Which transformers model computes our function is decided per checkpoint, and printed:
- native: transformers' own `nanochat` type (NanoChatForCausalLM) when the checkpoint uses none of the features it
  lacks. It has RMSNorm after the embedding, QK-norm after rotary, ReLU^2, softcap, GQA, untied head; it has no
  value embeddings, no per-layer resid/x0 scalars, no sliding windows and no gain on q/k after QK-norm. Its rotary
  turns the other way (x1 cos + x2 sin), which is not a feature but a convention: negating the second half of every
  q/k head in c_q/c_k turns it into ours exactly (RMSNorm and dot products are blind to the sign flip).
- custom: every other checkpoint (all of the current gpt.py's, whose value embeddings and QK gain 1.2 are
  architectural): the directory gets `configuration_nanochat_full.py` + `modeling_nanochat_full.py` (written from the
  two strings at the bottom of this file) and config.json's `auto_map` points at them; load with
  `trust_remote_code=True`. Every constant of the function (windows, gain, rotary base, softcap, value-embedding
  layers) is a field of config.json, none is hidden in the code.

The tokenizer is converted, not retrained: tiktoken's mergeable ranks become a byte-level BPE (GPT-2 byte->unicode
alphabet) whose merge list is each token's split into the two tokens BPE builds it from, ordered by rank, with
`ignore_merges` (tiktoken also looks a whole pre-token up first); the split regex is the pre-tokenizer, the 9
specials are added tokens. The HF tokenizer prepends <|bos|> (nanochat starts every document with it): encode with
add_special_tokens=False to get exactly our `tokenizer.encode`.

After writing, the directory is loaded back with transformers (offline) and must reproduce our logits (fp32) and
our tokenization; the measured numbers go into the model card (nanochat/model_card.py). Weights are fp32
safetensors (bf16 embeddings of GPU runs upcast exactly), vocab padding rows cropped.
"""

import json
import os

import torch

from nanochat import gpt
from nanochat.common import print0
from nanochat.tokenizer import SPECIAL_TOKENS

CONFIG_FILE = "configuration_nanochat_full.py"
MODELING_FILE = "modeling_nanochat_full.py"
CHECK_TOLERANCE = 1e-4  # max |logit difference| (fp32) accepted by the post-export check; tests see ~1e-6
CHECK_DECODE_STEPS = 8  # greedy steps through transformers' generate (KV cache) in the post-export check

# Our chat format (tokenizer.render_conversation): BOS, <|user_start|>text<|user_end|>, <|assistant_start|>text or
# parts<|assistant_end|>; a leading system message is merged into the first user message as "system\n\nuser".
# Assistant content may be a string or our parts (text / python / python_output); user content a string or HF text
# parts. Literal special-token markers are written here and re-parsed by the tokenizer as the special tokens.
CHAT_TEMPLATE = (  # one string; a line per Jinja statement
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages | length < 2 or messages[1]['role'] != 'user' -%}"
    "{{- raise_exception('a system message must be followed by a user message') -}}"
    "{%- endif -%}"
    "{%- set system_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prefix = '' -%}"
    "{%- endif -%}"
    "<|bos|>"
    "{%- for message in messages -%}"
    "{%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}"
    "{%- if message['role'] != expected -%}"
    "{{- raise_exception('roles must alternate user/assistant starting with user, after an optional system message') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}"
    "{%- set parts = message['content'] -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "<|user_start|>{{ system_prefix if loop.first else '' }}"
    "{%- for part in parts -%}{{ part['text'] }}{%- endfor -%}"
    "<|user_end|>"
    "{%- else -%}"
    "<|assistant_start|>"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'python' -%}<|python_start|>{{ part['text'] }}<|python_end|>"
    "{%- elif part['type'] == 'python_output' -%}<|output_start|>{{ part['text'] }}<|output_end|>"
    "{%- else -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "<|assistant_end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}"
)


# -----------------------------------------------------------------------------
# Tokenizer: tiktoken ranks -> HF byte-level BPE


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map, the alphabet of HF's ByteLevel pre-tokenizer/decoder."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def bpe_split(token, mergeable_ranks, max_rank):
    """Byte pair encoding of `token` with the merges of rank < max_rank, tiktoken's way (lowest rank first)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best = None  # (rank, index) of the best adjacent pair
        for i in range(len(parts) - 1):
            rank = mergeable_ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def bpe_merges(mergeable_ranks):
    """[(left bytes, right bytes)] in rank order: the merge that creates each multi-byte token."""
    single = [t for t in mergeable_ranks if len(t) == 1]
    assert len(single) == 256, f"a byte-level BPE needs all 256 single bytes as tokens, this one has {len(single)}"
    merges = []
    for token, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = bpe_split(token, mergeable_ranks, rank)
        assert len(parts) == 2, f"token {token!r} (rank {rank}) is not one merge of lower ranks: {parts}"
        merges.append((parts[0], parts[1]))
    return merges


def build_hf_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` that encodes and decodes exactly like our tiktoken one (plus BOS when asked)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    ranks, pattern = tokenizer.mergeable_ranks, tokenizer.pattern
    assert ranks is not None and pattern is not None, "only trained nanochat tokenizers (tokenizer.pkl) convert"
    b2u = bytes_to_unicode()

    def to_str(token):
        return "".join(b2u[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in bpe_merges(ranks)]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, byte_fallback=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    specials = sorted(SPECIAL_TOKENS, key=tokenizer.encode_special)
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:  # added tokens take the next free ids: they must land on ours
        assert hf.token_to_id(s) == tokenizer.encode_special(s), f"{s}: HF id {hf.token_to_id(s)} != ours"
    bos = tokenizer.get_bos_token_id()
    hf.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)]
    )
    return hf


def save_hf_tokenizer(tokenizer, out_dir):
    """tokenizer.json + tokenizer_config.json (+ chat template) through transformers, so its version reads them."""
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_hf_tokenizer(tokenizer),
        bos_token="<|bos|>",
        eos_token="<|assistant_end|>",
        pad_token="<|assistant_end|>",  # never attended to (attention_mask); finished rows are filled with it
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    hf_tokenizer.save_pretrained(out_dir)


# -----------------------------------------------------------------------------
# Which transformers model type can compute this checkpoint


def native_mismatches(model):
    """Reasons why transformers' native `nanochat` type cannot compute this model's function; [] when it can."""
    reasons = []
    config = model.config
    ve_layers = [int(i) for i, ve in model.value_embeds.items() if ve.weight.count_nonzero() > 0]
    if ve_layers:
        reasons.append(f"value embeddings with gates on layers {ve_layers} (native has none)")
    resid, x0 = model.resid_lambdas.detach().float(), model.x0_lambdas.detach().float()
    if not (torch.all(resid == 1) and torch.all(x0 == 0)):
        reasons.append(
            f"per-layer residual scalars, resid_lambdas in [{resid.min():.4g}, {resid.max():.4g}] and x0_lambdas in "
            f"[{x0.min():.4g}, {x0.max():.4g}] (native has none)"
        )
    short = [(i, w) for i, w in enumerate(model.window_sizes) if w < config.sequence_len]
    if short:
        reasons.append(f"sliding windows {short} (layer, tokens) shorter than the context (native attends to all)")
    if gpt.QK_GAIN != 1.0:
        reasons.append(f"q and k multiplied by {gpt.QK_GAIN} after QK-norm (native has no gain)")
    return reasons


def model_facts(model):
    """The constants of the function, from the code that loaded the checkpoint (nanochat/gpt.py)."""
    ve_layers = sorted(int(i) for i in model.value_embeds)
    return {
        "rotary_base": float(gpt.ROPE_BASE),
        "qk_gain": float(gpt.QK_GAIN),
        "softcap": float(gpt.SOFTCAP),
        "ve_gate_channels": gpt.VE_GATE_CHANNELS,
        "window_sizes": list(model.window_sizes),
        "value_embedding_layers": ve_layers,
        "padded_vocab_size": model.padded_vocab_size,
    }


def special_ids(tokenizer):
    bos = tokenizer.get_bos_token_id()
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    # the engine stops a row on <|assistant_end|> or <|bos|>: both end a generation here too
    return {"bos_token_id": bos, "eos_token_id": [assistant_end, bos], "pad_token_id": assistant_end}


def fp32_state(model):
    """Our state dict in fp32 with the vocab padding rows cropped (row slices stay contiguous: no copy on CPU fp32)."""
    V = model.config.vocab_size
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu", torch.float32)
        if key == "wte.weight" or key == "lm_head.weight" or key.startswith("value_embeds."):
            tensor = tensor[:V]
        state[key] = tensor.contiguous()
    return state


def native_weights(model):
    """State dict in transformers' NanoChatForCausalLM names; c_q/c_k get the second half of each head negated."""
    state = fp32_state(model)
    D = model.head_dim
    out = {"model.embed_tokens.weight": state["wte.weight"], "lm_head.weight": state["lm_head.weight"]}

    def flip_rotary(weight):  # (heads * D, C): negate rows D/2..D-1 of every head
        w = weight.view(-1, D, weight.size(-1)).clone()
        w[:, D // 2 :] *= -1
        return w.view_as(weight).contiguous()

    for i in range(model.config.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        out[q + "self_attn.q_proj.weight"] = flip_rotary(state[p + "attn.c_q.weight"])
        out[q + "self_attn.k_proj.weight"] = flip_rotary(state[p + "attn.c_k.weight"])
        out[q + "self_attn.v_proj.weight"] = state[p + "attn.c_v.weight"]
        out[q + "self_attn.o_proj.weight"] = state[p + "attn.c_proj.weight"]
        out[q + "mlp.fc1.weight"] = state[p + "mlp.c_fc.weight"]
        out[q + "mlp.fc2.weight"] = state[p + "mlp.c_proj.weight"]
    return out


def native_config(model, tokenizer):
    from transformers import NanoChatConfig

    c = model.config
    return NanoChatConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=4 * c.n_embd,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        max_position_embeddings=c.sequence_len,
        hidden_act="relu2",
        rms_norm_eps=torch.finfo(torch.float32).eps,  # F.rms_norm's default eps (it normalizes in fp32)
        rope_parameters={"rope_type": "default", "rope_theta": float(gpt.ROPE_BASE)},
        final_logit_softcapping=float(gpt.SOFTCAP),
        attention_bias=False,
        tie_word_embeddings=False,
        architectures=["NanoChatForCausalLM"],
        dtype="float32",
        **special_ids(tokenizer),
    )


def custom_weights(model):
    """Our own names under `model.` (lm_head at the top), as modeling_nanochat_full.py declares them."""
    return {(k if k == "lm_head.weight" else "model." + k): v for k, v in fp32_state(model).items()}


def custom_config(model, tokenizer):
    import transformers

    c, facts = model.config, model_facts(model)
    return {
        "architectures": ["NanoChatFullForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_nanochat_full.NanoChatFullConfig",
            "AutoModelForCausalLM": "modeling_nanochat_full.NanoChatFullForCausalLM",
        },
        "model_type": "nanochat_full",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head,
        "max_position_embeddings": c.sequence_len,
        "window_sizes": facts["window_sizes"],
        "value_embedding_layers": facts["value_embedding_layers"],
        "ve_gate_channels": facts["ve_gate_channels"],
        "rotary_base": facts["rotary_base"],
        "qk_gain": facts["qk_gain"],
        "final_logit_softcapping": facts["softcap"],
        "use_cache": True,
        "tie_word_embeddings": False,
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        **special_ids(tokenizer),
    }


# -----------------------------------------------------------------------------
# Writing and checking a directory


def write_generation_config(tokenizer, out_dir):
    from transformers import GenerationConfig

    ids = special_ids(tokenizer)
    GenerationConfig(**ids).save_pretrained(out_dir)


def export_model(model, tokenizer, out_dir):
    """Write config, weights, code (custom case), tokenizer and generation config. Returns the export facts."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    reasons = native_mismatches(model)
    kind = "custom" if reasons else "native"
    notes = []
    if kind == "native":
        print0("export: transformers' native `nanochat` type computes this checkpoint exactly (no feature it lacks)")
        T = model.config.sequence_len
        notes.append(
            f"nanochat's long layers attend to keys at most {T} positions back, the native type to all earlier "
            f"tokens: the two differ only on contexts longer than {T + 1} tokens, which nanochat never runs "
            f"(its generation stops when the context reaches {T} tokens)."
        )
        print0(f"  note: {notes[-1]}")
        native_config(model, tokenizer).save_pretrained(out_dir)
        weights = native_weights(model)
        for stale in (CONFIG_FILE, MODELING_FILE):  # an earlier custom export into the same directory
            if os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
    else:
        print0("export: custom modeling code (load with trust_remote_code=True); native `nanochat` lacks:")
        for reason in reasons:
            print0(f"  - {reason}")
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(custom_config(model, tokenizer), f, indent=2)
        for name, code in ((CONFIG_FILE, CONFIGURATION_CODE), (MODELING_FILE, MODELING_CODE)):
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                f.write(code)
        weights = custom_weights(model)
    weights_path = os.path.join(out_dir, "model.safetensors")
    save_file(weights, weights_path, metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_path, 0o666 & ~umask)  # safetensors writes 0600; a folder to share must be readable like its files
    num_tensors = len(weights)
    del weights  # the check that follows loads a second copy of the model
    save_hf_tokenizer(tokenizer, out_dir)
    write_generation_config(tokenizer, out_dir)
    return {"kind": kind, "reasons": reasons, "notes": notes, "weights_dtype": "float32", "num_tensors": num_tensors}


CHECK_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Unicode: café, naïve, Straße, 東京, 안녕하세요, Привет, 🚀👍🏽 e\u0301",
    "def add(a, b):\n    return a + b  # tabs\tand   spaces\n\n\n",
    "Numbers 0 7 42 123 4567 3.14159 -2.5e-10 1,000,000 2024-01-31",
    "   leading and trailing whitespace \r\n\t ",
    "It's we'll they've I'M DON'T",
]
CHECK_CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 12 * 7?"},
        {
            "role": "assistant",
            "content": [{"type": "python", "text": "12 * 7"}, {"type": "python_output", "text": "84"}],
        },
        {"role": "user", "content": "Thanks! And 3 + 4?"},
        {"role": "assistant", "content": "7."},
    ]
}


def check_export(model, tokenizer, out_dir, kind):
    """Load the directory with transformers (offline) and measure how far it is from our model and tokenizer."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(
        out_dir, trust_remote_code=kind == "custom", local_files_only=True, dtype=torch.float32
    )
    hf_model.eval()
    # long enough to cross the shortest sliding window, so that the windows are part of the check
    T = min(model.config.sequence_len, min(model.window_sizes) + 64)
    rng = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (1, T), generator=rng)
    idx[0, 0] = tokenizer.get_bos_token_id()
    device = model.get_device()
    with torch.no_grad():
        ours = model(idx.to(device)).float().cpu()
        theirs = hf_model(idx).logits.float()
    max_diff = (ours - theirs).abs().max().item()
    assert max_diff <= CHECK_TOLERANCE, f"exported model differs from ours: max |logit diff| {max_diff:.3e}"

    # KV-cached decoding (transformers' generate and its cache API, which changes between versions): the logits of
    # every greedy step must be ours on the same tokens (compared as logits, so that a near-tie cannot fail it).
    # The prompt ends just short of the shortest window, so that decoding crosses it.
    prompt = idx[:, : min(min(model.window_sizes), T - CHECK_DECODE_STEPS) - CHECK_DECODE_STEPS // 2]
    special = special_ids(tokenizer)  # no stop token: all steps run; the mask says no token of the prompt is padding
    with torch.no_grad():
        gen = hf_model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=CHECK_DECODE_STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=special["pad_token_id"],
        )  # fmt: skip
        decoded = torch.stack(gen.logits, dim=1).float()  # (1, steps, V)
        ours = model(gen.sequences.to(device)).float().cpu()[:, prompt.size(1) - 1 : -1]
    decode_diff = (ours - decoded).abs().max().item()
    assert decoded.size(1) == CHECK_DECODE_STEPS and decode_diff <= CHECK_TOLERANCE, (
        f"the exported model's cached decoding differs from ours: {decoded.size(1)} steps, max |logit diff| "
        f"{decode_diff:.3e} (transformers {transformers.__version__})"
    )

    hf_tokenizer = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=kind == "custom", local_files_only=True)
    for text in CHECK_TEXTS:
        ids = tokenizer.encode(text)
        assert hf_tokenizer.encode(text, add_special_tokens=False) == ids, f"HF tokenizer encodes {text!r} differently"
        assert hf_tokenizer.decode(ids) == tokenizer.decode(ids), f"HF tokenizer decodes {text!r} differently"
    chat_ids, _ = tokenizer.render_conversation(CHECK_CONVERSATION, max_tokens=None)
    hf_chat_ids = hf_tokenizer.apply_chat_template(CHECK_CONVERSATION["messages"], tokenize=True, return_dict=False)
    assert list(hf_chat_ids) == chat_ids, "the chat template renders the check conversation differently"
    return {
        "max_abs_logit_diff": max_diff,
        "check_tokens": T,
        "max_abs_decode_logit_diff": decode_diff,
        "check_decode_steps": CHECK_DECODE_STEPS,
        "tokenizer_check_texts": len(CHECK_TEXTS) + 1,
        "transformers_version": transformers.__version__,
    }


def export_checkpoint(source, out_dir, model_tag=None, step=None):
    """Load a checkpoint (load_model, on CPU in fp32), export it, check it, write the model card. Returns the facts."""
    from nanochat.checkpoint_manager import PHASE_DIRS, find_largest_model, load_model
    from nanochat.common import get_base_dir
    from nanochat.model_card import load_lineage, write_model_card

    model_tag = model_tag or find_largest_model(os.path.join(get_base_dir(), PHASE_DIRS[source]))
    model, tokenizer, meta = load_model(source, "cpu", phase="eval", model_tag=model_tag, step=step)
    assert model.compute_dtype == torch.float32, (
        f"the model runs in {model.compute_dtype} on CPU ($NANOCHAT_DTYPE?): the export check needs fp32"
    )
    info = export_model(model, tokenizer, out_dir)
    info.update(check_export(model, tokenizer, out_dir, info["kind"]))
    info.update(
        {
            "source": source,
            "model_tag": model_tag,
            "step": meta["step"],
            "out_dir": out_dir,
            "tokenizer": {
                "vocab_size": tokenizer.get_vocab_size(),
                "special_tokens": sorted(SPECIAL_TOKENS, key=tokenizer.encode_special),
                "pattern": tokenizer.pattern,
            },
        }
    )
    lineage = load_lineage(source, model_tag, meta)
    write_model_card(lineage, os.path.join(out_dir, "README.md"), export_info=info)
    print0(
        f"exported {source}/{model_tag} step {meta['step']} to {out_dir} ({info['kind']}): max |logit diff| vs ours "
        f"{info['max_abs_logit_diff']:.2e} over {info['check_tokens']} tokens; tokenizer identical on "
        f"{info['tokenizer_check_texts']} check texts; model card README.md with {len(lineage)} stage(s)"
    )
    return info


# -----------------------------------------------------------------------------
# The code written into a custom export. Plain torch + transformers (>= 5), nothing from nanochat.

CONFIGURATION_CODE = r'''"""
Configuration of nanochat's GPT in HuggingFace transformers, written by nanochat's exporter (nanochat/hf_export.py).
Every constant of the model's function is a field here (and in config.json).
"""

from typing import ClassVar

from transformers import PretrainedConfig


class NanoChatFullConfig(PretrainedConfig):
    model_type = "nanochat_full"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cache", "past_key_values"]

    vocab_size: int = 32768
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    num_key_value_heads: int = 6
    max_position_embeddings: int = 2048  # the training context (nanochat's sequence_len)
    window_sizes: list[int] | None = None  # per layer: query i sees key j iff 0 <= i - j <= window
    value_embedding_layers: list[int] | None = None  # layers whose v gets a gated value embedding
    ve_gate_channels: int = 12  # the value-embedding gate reads this many leading channels of the attention input
    rotary_base: float = 100000.0
    qk_gain: float = 1.2  # q and k are multiplied by this after QK-norm
    final_logit_softcapping: float = 15.0
    use_cache: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.window_sizes is None:
            self.window_sizes = [self.max_position_embeddings] * self.num_hidden_layers
        if self.value_embedding_layers is None:
            self.value_embedding_layers = []
        assert len(self.window_sizes) == self.num_hidden_layers, "one window size per layer"
        super().__post_init__(**kwargs)


__all__ = ["NanoChatFullConfig"]
'''

MODELING_CODE = r'''"""
nanochat's GPT in HuggingFace transformers, written by nanochat's exporter (nanochat/hf_export.py). It computes the
same function as nanochat/gpt.py; every constant comes from config.json:
- x0 = RMSNorm(wte(ids)); before block i: x = resid_lambdas[i] * x + x0_lambdas[i] * x0
- attention: q, k, v = c_q(x), c_k(x), c_v(x); on value_embedding_layers
  v += 3 * sigmoid(ve_gate(x[..., :ve_gate_channels])) * value_embeds[i](ids), per kv-head;
  rotary (half split, base rotary_base, x1 cos - x2 sin); q, k = RMSNorm(q) * qk_gain, RMSNorm(k) * qk_gain;
  grouped-query attention where key j is visible from query i iff 0 <= i - j <= window_sizes[i]
- MLP c_proj(relu(c_fc(x))^2); pre-norm blocks; parameter-free RMSNorm (F.rms_norm) everywhere; no biases
- logits = softcap * tanh(lm_head(RMSNorm(x)) / softcap), in fp32; lm_head is not tied to wte
Masks: positions are indices into the cache (left padding keeps distances between real tokens); padded keys are
masked by attention_mask, and every query sees itself so that padded rows stay finite.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_nanochat_full import NanoChatFullConfig

# transformers 5.24 renamed the KV cache argument and output field `past_key_values` -> `cache`; older 5.x use the
# old name. Forward takes either; outputs use the name of the installed version (no deprecation warning).
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    """x (B, T, H, D), cos/sin (B, T, 1, D/2): (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class NanoChatFullAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qk_gain = config.qk_gain
        self.ve_gate_channels = config.ve_gate_channels
        C, D = config.hidden_size, self.head_dim
        self.c_q = nn.Linear(C, self.n_head * D, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        has_ve = layer_idx in config.value_embedding_layers
        self.ve_gate = nn.Linear(config.ve_gate_channels, self.n_kv_head, bias=False) if has_ve else None

    def forward(self, x, ve, cos, sin, mask, cache):
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q = self.c_q(x).view(B, T, H, D)
        k = self.c_k(x).view(B, T, Hkv, D)
        v = self.c_v(x).view(B, T, Hkv, D)
        if ve is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, Hkv, D)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q) * self.qk_gain, norm(k) * self.qk_gain
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, Tk, D), all positions so far
        if mask is None:  # plain causal over the whole sequence (no cache, no padding, window covers it)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoChatFullMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, 4 * config.hidden_size, bias=False)
        self.c_proj = nn.Linear(4 * config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class NanoChatFullBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = NanoChatFullAttention(config, layer_idx)
        self.mlp = NanoChatFullMLP(config)

    def forward(self, x, ve, cos, sin, mask, cache):
        x = x + self.attn(norm(x), ve, cos, sin, mask, cache)
        return x + self.mlp(norm(x))


class NanoChatFullPreTrainedModel(PreTrainedModel):
    config_class = NanoChatFullConfig
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["NanoChatFullBlock"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["cache", "past_key_values"]

    def _init_weights(self, module):
        # only for a model built from a config alone; exported weights overwrite all of this
        from transformers import initialization as init

        super()._init_weights(module)
        if isinstance(module, NanoChatFullModel):
            init.ones_(module.resid_lambdas)
            init.zeros_(module.x0_lambdas)


class NanoChatFullModel(NanoChatFullPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        C, V = config.hidden_size, config.vocab_size
        kv_dim = config.num_key_value_heads * (C // config.num_attention_heads)
        self.wte = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([NanoChatFullBlock(config, i) for i in range(config.num_hidden_layers)])
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in config.value_embedding_layers})
        self.resid_lambdas = nn.Parameter(torch.ones(config.num_hidden_layers))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def rotary(self, position_ids, dtype):
        """cos, sin (B, T, 1, D/2) at the given positions, computed as nanochat does (fp32, then cast)."""
        D = self.config.hidden_size // self.config.num_attention_heads
        device = position_ids.device
        inv_freq = 1.0 / (self.config.rotary_base ** (torch.arange(0, D, 2, dtype=torch.float32, device=device) / D))
        freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # (B, T, D/2)
        return freqs.cos().to(dtype)[:, :, None, :], freqs.sin().to(dtype)[:, :, None, :]

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        past_key_values=None,
        **kwargs,
    ):
        cache = past_key_values if cache is None else cache
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("nanochat needs input_ids (its value embeddings are looked up by token id)")
        B, T = input_ids.shape
        device = input_ids.device
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        Tk = past + T
        q_idx = torch.arange(past, Tk, device=device)
        if position_ids is None:
            position_ids = q_idx[None].expand(B, T)
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.size(-1) != Tk:
                raise ValueError(
                    f"attention_mask must be (batch, {Tk}) (2-D over all positions), got {tuple(attention_mask.shape)}"
                )
            key_ok = attention_mask.to(torch.bool)
            if bool(key_ok.all()):
                key_ok = None
        else:
            key_ok = None
        dist = q_idx[:, None] - torch.arange(Tk, device=device)[None, :]  # (T, Tk) query index - key index
        masks = {}
        for window in set(self.config.window_sizes):
            if key_ok is None and past == 0 and window >= T - 1:
                masks[window] = None
                continue
            visible = (dist >= 0) & (dist <= window)  # (T, Tk)
            if key_ok is not None:
                visible = (visible[None] & key_ok[:, None, :]) | (dist == 0)  # (B, T, Tk)
                visible = visible[:, None]  # (B, 1, T, Tk)
            masks[window] = visible

        x = norm(self.wte(input_ids))
        x0 = x
        cos, sin = self.rotary(position_ids, x.dtype)
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i].to(x.dtype) * x + self.x0_lambdas[i].to(x.dtype) * x0
            ve = self.value_embeds[str(i)](input_ids).to(x.dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, masks[self.config.window_sizes[i]], cache)
        x = norm(x)
        return BaseModelOutputWithPast(last_hidden_state=x, **{CACHE_FIELD: cache if use_cache else None})


class NanoChatFullForCausalLM(NanoChatFullPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = NanoChatFullModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.wte

    def set_input_embeddings(self, value):
        self.model.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        past_key_values=None,
        **kwargs,
    ):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values if cache is None else cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        x = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        elif not isinstance(logits_to_keep, int):
            x = x[:, logits_to_keep]
        cap = self.config.final_logit_softcapping
        logits = self.lm_head(x).float()
        logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:  # HF convention: labels are the inputs, shifted here; -100 = ignore
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(out, CACHE_FIELD)})


__all__ = ["NanoChatFullConfig", "NanoChatFullForCausalLM", "NanoChatFullModel", "NanoChatFullPreTrainedModel"]
'''
