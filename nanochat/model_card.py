"""
The model card (README.md with HuggingFace front matter) of an exported model, written from checkpoint metadata alone.

    write_model_card([base_meta, sft_meta], "out/README.md", export_info=info)   # metas, oldest stage first
    write_model_card(["<base>/chatsft_checkpoints/d20"], "out/README.md")       # or checkpoint directories

What a field does not record is left out, never filled in: no "n/a", no estimates. Sources, per stage:
- `meta_{step}.json`: model_config, user_config (every flag), hparams (the dial's derived values), batch layout,
  dataloader_state, loop_state (training time of timed steps), metrics (val bpb / CORE per eval step, train loss per
  step), core_results (per task), git; and, when a training script records them: `run_info` (hardware, throughput),
  `data` (data source), `tokens_seen`, `optimizer` (param groups), `chat_results` (per task) and `chatcore`
  (scripts/chat_eval.py), `parent` ({"source", "model_tag", "step"}: the checkpoint this stage started from, which
  builds the lineage); the post-training stages add `num_iterations`/`num_steps`, `optimizer_config` (the
  setup_optimizer arguments), `optimizer_source` and `data_position`.
- `optim_{step}_rank0.pt`: the optimizer's param groups (kind, peak LR, betas / momentum, eps, weight decay) when
  the meta has no `optimizer` entry; names come from GPT.setup_optimizer's group order, used only when the saved
  groups have exactly its layout.
- export_info (nanochat/hf_export.py): which transformers type loads it and why, and the measured export check.
"""

import os

import torch

from nanochat import gpt
from nanochat.checkpoint_manager import PHASE_DIRS, find_last_step, meta_path, optim_path, read_meta

STAGE_TITLES = {
    "base": "base pretraining",
    "mid": "midtraining",
    "sft": "supervised fine-tuning (SFT)",
    "rl": "reinforcement learning (RL)",
}
CHAT_STAGES = ("mid", "sft", "rl")
# meta keys rendered by a dedicated section; any other top-level number goes into the stage's metrics table
CONSUMED_KEYS = {
    "step", "format_version", "git", "model_config", "user_config", "hparams", "world_size", "device_batch_size",
    "max_seq_len", "total_batch_size", "grad_accum_steps", "dataloader_state", "loop_state", "rng_state", "val_bpb",
    "metrics", "core_results", "run_info", "data", "tokens_seen", "optimizer", "chat_results", "chatcore", "parent",
    "stage", "chat_eval_settings", "num_iterations", "num_steps", "optimizer_config", "optimizer_source",
    "data_position",
}  # fmt: skip
RUN_INFO_LABELS = {
    "device_name": "device",
    "device_count": "devices (processes)",
    "device_type": "device type",
    "dtype": "compute dtype",
    "attention": "attention kernel",
    "fp8_layers": "linear layers trained in FP8",
    "ce_chunk_rows": "loss chunk (tokens; 0 = unchunked)",
    "mean_tok_per_sec": "mean throughput (tokens/s)",
    "mfu_percent": "MFU (%)",
    "mfu_basis": "MFU basis",
    "peak_memory": "peak memory",
    "wall_time_s": "wall time (s)",
}
LIST_SHOWN = 6  # longer lists of names (e.g. data files) show their first and last few and the count


# -----------------------------------------------------------------------------
# Reading stages


def stage_of_dir(ckpt_dir):
    """'sft' for .../chatsft_checkpoints/<tag>, None for a directory outside the standard layout."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(ckpt_dir)))
    return {v: k for k, v in PHASE_DIRS.items()}.get(parent)


def read_optimizer_groups(ckpt_dir, step):
    """The saved param groups of rank 0 without their tensors (mmap: nothing but the group dicts is read)."""
    path = optim_path(ckpt_dir, step, 0)
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    groups = []
    for group in state["param_groups"]:
        g = {k: (v.item() if torch.is_tensor(v) else v) for k, v in group.items() if k != "params"}
        g["num_tensors"] = len(group["params"])
        groups.append(g)
    return groups


def record_from_dir(ckpt_dir, step=None):
    step = find_last_step(ckpt_dir) if step is None else step
    meta = read_meta(ckpt_dir, step)
    record = {
        "stage": meta.get("stage") or stage_of_dir(ckpt_dir),
        "model_tag": os.path.basename(os.path.normpath(ckpt_dir)),
        "ckpt_dir": ckpt_dir,
        "meta": meta,
    }
    if "optimizer" not in meta:
        record["optimizer_groups"] = read_optimizer_groups(ckpt_dir, meta["step"])
    return record


def to_record(item):
    """A stage record {"stage", "model_tag", "meta", ...} from a record, a meta dict or a checkpoint directory."""
    if isinstance(item, (str, os.PathLike)):
        return record_from_dir(str(item))
    if "meta" in item:
        return item
    return {"stage": item.get("stage"), "model_tag": None, "meta": item}


def load_lineage(source, model_tag, meta, base_dir=None):
    """Stage records from the first recorded ancestor to this checkpoint, following each meta's `parent` link."""
    from nanochat.common import get_base_dir

    base_dir = base_dir or get_base_dir()
    ckpt_dir = os.path.join(base_dir, PHASE_DIRS[source], model_tag)
    records = [{**record_from_dir(ckpt_dir, meta["step"]), "stage": source}]
    seen = {(source, model_tag, meta["step"])}
    while isinstance(records[0]["meta"].get("parent"), dict):
        p = records[0]["meta"]["parent"]
        key = (p.get("source"), p.get("model_tag"), p.get("step"))
        if key in seen or p.get("source") not in PHASE_DIRS or not p.get("model_tag"):
            break
        parent_dir = os.path.join(base_dir, PHASE_DIRS[p["source"]], p["model_tag"])
        step = p.get("step")
        if step is None or not os.path.exists(meta_path(parent_dir, step)):
            break  # the parent checkpoint is gone: the lineage starts at the oldest one still on disk
        seen.add(key)
        records.insert(0, {**record_from_dir(parent_dir, step), "stage": p["source"]})
    return records


# -----------------------------------------------------------------------------
# Formatting


def fmt(value):
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.4e}"
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def cell(value):
    """A table cell: formatted, pipes escaped, empty strings shown as quotes so the cell is not blank."""
    text = '""' if value == "" else fmt(value)
    return text.replace("|", "\\|").replace("\n", "\\n")


def table(header, rows):
    if not rows:
        return []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_step_series(v):
    """[[step, value], ...] as base_train records val bpb and CORE."""
    return isinstance(v, list) and v and all(isinstance(p, list) and len(p) == 2 and is_number(p[1]) for p in v)


def is_step_dict_series(v):
    """[[step, {name: value}], ...] as chat_sft records its chat evals and chat_rl its pass@k."""
    return (
        isinstance(v, list)
        and v
        and all(isinstance(p, list) and len(p) == 2 and isinstance(p[1], dict) for p in v)
        and all(is_number(x) for p in v for x in p[1].values())
    )


def is_record_list(v):
    """A non-empty list of dicts (e.g. a task mixture): rendered as its own table."""
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def shorten_list(v):
    """A long list of names as its first and last few and the count; anything else unchanged."""
    if isinstance(v, list) and len(v) > LIST_SHOWN and all(isinstance(x, str) for x in v):
        half = LIST_SHOWN // 2
        return f"{len(v):,} items: {', '.join(v[:half])}, ..., {', '.join(v[-half:])}"
    return v


def records_table(records):
    header = list(dict.fromkeys(k for r in records for k in r))
    return table(header, [[r.get(k, "-") for k in header] for r in records])


# -----------------------------------------------------------------------------
# Sections


def front_matter(records, export_info):
    stage = records[-1]["stage"]
    tags = ["nanochat", "gpt", "text-generation"]
    if stage in CHAT_STAGES:
        tags.append("conversational")
    if export_info and export_info.get("kind") == "custom":
        tags.append("custom_code")
    lines = ["---", "license: mit", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    return lines + [f"- {t}" for t in tags] + ["---", ""]


def title_section(records, export_info):
    final = records[-1]
    meta = final["meta"]
    tag = final.get("model_tag") or (export_info or {}).get("model_tag")
    name = f"nanochat {tag}" if tag else "nanochat"
    stage = STAGE_TITLES.get(final["stage"], final["stage"])
    lines = [f"# {name}", ""]
    what = f"A {fmt(count_params(meta['model_config'])['total'])}-parameter decoder-only transformer"
    what += f" trained with nanochat; this is the checkpoint of step {fmt(meta['step'])}"
    what += f" of its {stage} stage." if stage else "."
    if len(records) > 1:
        what += " Stages: " + " -> ".join(r["stage"] or f"stage {i + 1}" for i, r in enumerate(records)) + "."
    return lines + [what, ""]


def how_to_load_section(export_info, stage):
    if not export_info:
        return []
    path = export_info.get("out_dir", ".")
    custom = export_info.get("kind") == "custom"
    trust = ", trust_remote_code=True" if custom else ""
    lines = [
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        "",
        f'path = "{path}"  # this directory (or the Hub repo it is uploaded to)',
        f"tokenizer = AutoTokenizer.from_pretrained(path{trust})",
        f"model = AutoModelForCausalLM.from_pretrained(path{trust})",
        'generate = pipeline("text-generation", model=model, tokenizer=tokenizer)',
        "",
    ]
    if stage in CHAT_STAGES:
        lines += [
            "# chat: the template renders nanochat's format; generation stops at <|assistant_end|>",
            'messages = [{"role": "user", "content": "Why is the sky blue?"}]',
            'print(generate(messages, max_new_tokens=128)[0]["generated_text"][-1]["content"])',
            "",
        ]
    lines += [
        "# plain text: the tokenizer prepends <|bos|>, as nanochat does for every document",
        'print(generate("The capital of France is", max_new_tokens=16)[0]["generated_text"])',
        "```",
        "",
    ]
    if custom:
        lines += [
            (
                "`trust_remote_code=True` runs `modeling_nanochat_full.py` from this directory (see Export below). "
                "The tokenizer needs no code: `AutoTokenizer.from_pretrained(path, trust_remote_code=False)` loads it "
                "too (a bare call asks first in interactive sessions); AutoModelForCausalLM refuses without it."
            ),
            "",
        ]
    lines += [
        (
            "Chat format, token by token: `<|bos|><|user_start|>...<|user_end|><|assistant_start|>...<|assistant_end|>`;"
            ' a system message is merged into the first user message (`system + "\\n\\n" + user`); assistant tool'
            " calls are `<|python_start|>...<|python_end|>` and their results `<|output_start|>...<|output_end|>`."
        ),
        "",
    ]
    return lines


def export_section(export_info):
    if not export_info:
        return []
    lines = ["## Export", ""]
    if export_info["kind"] == "native":
        lines.append(
            "Loads as transformers' native `nanochat` model type (`NanoChatForCausalLM`): this checkpoint uses none "
            "of the features that type lacks. Its rotary embedding turns the other way than nanochat's; the "
            "exporter negates the second half of every query/key head in `q_proj`/`k_proj`, which makes the two "
            "functions identical."
        )
    else:
        lines.append(
            "Loads with custom code (`configuration_nanochat_full.py`, `modeling_nanochat_full.py`, "
            "`trust_remote_code=True`), because transformers' native `nanochat` type lacks features this "
            "checkpoint uses:"
        )
        lines.append("")
        lines += [f"- {r}" for r in export_info["reasons"]]
    lines.append("")
    for note in export_info.get("notes", []):
        lines += [f"Note: {note}", ""]
    rows = [("weights", f"model.safetensors, {export_info['weights_dtype']}, {export_info['num_tensors']} tensors")]
    if "max_abs_logit_diff" in export_info:
        rows.append(
            (
                "check at export",
                (
                    f"max abs logit difference vs nanochat {export_info['max_abs_logit_diff']:.3e} (fp32) over "
                    f"{export_info['check_tokens']} tokens"
                ),
            )
        )
        if "max_abs_decode_logit_diff" in export_info:
            rows.append(
                (
                    "cached decoding check",
                    (
                        f"max abs logit difference {export_info['max_abs_decode_logit_diff']:.3e} over "
                        f"{export_info['check_decode_steps']} greedy steps of transformers' generate (KV cache)"
                    ),
                )
            )
        rows.append(("tokenizer check", f"identical ids on {export_info['tokenizer_check_texts']} texts incl. a chat"))
        rows.append(("transformers version of the check", export_info["transformers_version"]))
    if export_info.get("source"):
        rows.append(
            (
                "exported checkpoint",
                f"{export_info['source']} / {export_info.get('model_tag')} / step {export_info.get('step')}",
            )
        )
    return lines + table(["", ""], rows)


def count_params(model_config):
    """Parameter counts by kind and FLOPs per token, from the config alone (a model on the meta device)."""
    with torch.device("meta"):
        model = gpt.GPT(gpt.GPTConfig(**model_config))
    counts = model.num_scaling_params()
    return {
        **counts,
        "flops_per_token": model.estimate_flops(),
        "window_sizes": model.window_sizes,
        "padded_vocab_size": model.padded_vocab_size,
        "value_embedding_layers": sorted(int(i) for i in model.value_embeds),
    }


def architecture_section(model_config):
    c = model_config
    counts = count_params(c)
    head_dim = c["n_embd"] // c["n_head"]
    windows = counts["window_sizes"]
    rows = [
        ("layers (n_layer)", c["n_layer"]),
        ("width (n_embd)", c["n_embd"]),
        ("query heads / key-value heads", f"{c['n_head']} / {c['n_kv_head']} (head dim {head_dim})"),
        ("context (sequence_len, tokens)", c["sequence_len"]),
        (
            "vocabulary",
            (
                f"{fmt(c['vocab_size'])} (embedding rows padded to {fmt(counts['padded_vocab_size'])} in "
                "training; the export crops the padding)"
            ),
        ),
        ("attention windows per layer (tokens)", f"pattern {c['window_pattern']!r}: {fmt(windows)}"),
        (
            "value embeddings",
            (
                f"layers {counts['value_embedding_layers']}, added to v through a gate "
                f"3*sigmoid(W x[:{gpt.VE_GATE_CHANNELS}]) per kv head"
            ),
        ),
        ("residual scalars", "x = resid_lambdas[i] * x + x0_lambdas[i] * x0 before block i (learned)"),
        ("positions", f"rotary, base {fmt(gpt.ROPE_BASE)}"),
        ("QK-norm", f"RMSNorm on q and k, then times {gpt.QK_GAIN}"),
        ("MLP", "ReLU^2, 4x width"),
        ("norm", "parameter-free RMSNorm (after the embedding, before each sublayer, before the head)"),
        ("output", f"untied lm_head, logits softcapped {fmt(gpt.SOFTCAP)} * tanh(z / {fmt(gpt.SOFTCAP)})"),
        ("biases", "none"),
        ("parameters", f"{fmt(counts['total'])} total"),
    ]
    for kind in ("wte", "value_embeds", "lm_head", "transformer_matrices", "scalars"):
        rows.append((f"parameters: {kind}", counts[kind]))
    rows.append(("training FLOPs per token (6N + attention)", f"{counts['flops_per_token']:.4e}"))
    return ["## Architecture", ""] + table(["", ""], rows)


def tokenizer_section(export_info):
    tok = (export_info or {}).get("tokenizer")
    if not tok:
        return []
    rows = [
        ("type", "byte-level BPE (trained with rustbpe, run with tiktoken; converted to a HF fast tokenizer)"),
        ("vocabulary", tok["vocab_size"]),
        ("special tokens", " ".join(f"`{s}`" for s in tok["special_tokens"])),
        ("split pattern", f"`{tok['pattern']}`"),
    ]
    return ["## Tokenizer", ""] + table(["", ""], rows)


def metric_value(meta, name):
    """Headline metrics of a stage for the summary table."""
    if name == "val bpb":
        return meta.get("val_bpb")
    if name == "CORE":
        return (meta.get("core_results") or {}).get("core")
    if name == "ChatCORE":
        return meta.get("chatcore")
    value = (meta.get("chat_results") or {}).get(name)
    return value.get("accuracy") if isinstance(value, dict) else value


def summary_section(records):
    names = ["val bpb", "CORE"]
    for r in records:
        for task in r["meta"].get("chat_results") or {}:
            if task not in names:
                names.append(task)
    names.append("ChatCORE")
    rows = []
    for name in names:
        values = [metric_value(r["meta"], name) for r in records]
        if any(is_number(v) for v in values):
            rows.append([name] + [f"{v:.4f}" if is_number(v) else "-" for v in values])
    if not rows:
        return []
    header = ["metric"] + [
        f"{r['stage'] or 'stage ' + str(i + 1)} (step {fmt(r['meta']['step'])})" for i, r in enumerate(records)
    ]
    return ["## Evaluation summary", "", "A dash: the stage did not measure it.", ""] + table(header, rows)


def optimizer_rows(record):
    """(name, kind, tensors, peak LR, betas or momentum, eps, weight decay) per param group."""
    meta = record["meta"]
    groups = meta.get("optimizer") or record.get("optimizer_groups")
    if not groups:
        return [], None
    from_file = "optimizer" not in meta
    names = group_names(meta["model_config"], groups)
    rows = []
    for i, g in enumerate(groups):
        name = g.get("name") or (names[i] if names else f"group {i}")
        if g.get("kind") == "muon":
            betas = f"momentum {fmt(g.get('momentum'))}, beta2 {fmt(g.get('beta2'))}"
        else:
            betas = fmt(g.get("betas"))
        lr = g.get("initial_lr", g.get("lr"))
        rows.append([name, g.get("kind"), g.get("num_tensors", ""), lr, betas, g.get("eps", "-"),
                     g.get("weight_decay")])  # fmt: skip
    if from_file:
        note = (
            "Read from the rank-0 optimizer file of the checkpoint: peak LR is the group's initial_lr; Muon momentum "
            "and weight decay follow the schedules below, shown at the checkpoint's step."
        )
    else:
        scheduled = list(dict.fromkeys(k for g in groups for k in g.get("scheduled", []) if k != "lr"))
        note = "Peak LR is the group's initial_lr; the training loop scales it every step (LR multiplier)"
        if scheduled:
            verb = "follows a schedule" if len(scheduled) == 1 else "follow schedules"
            note += f"; {' and '.join(scheduled)} {verb} too, shown at the checkpoint's step"
        note += "."
    return rows, note


def group_names(model_config, groups):
    """GPT.setup_optimizer's group names, if the saved groups have exactly its layout (kinds and sizes)."""
    with torch.device("meta"):
        model = gpt.GPT(gpt.GPTConfig(**model_config))
    reference = model.setup_optimizer().param_groups
    if len(reference) != len(groups):
        return None
    for ref, g in zip(reference, groups):
        if ref["kind"] != g.get("kind") or ("num_tensors" in g and len(ref["params"]) != g["num_tensors"]):
            return None
    return [ref["name"] for ref in reference]


def dataloader_rows(states):
    rows = []
    for i, s in enumerate(states):
        rows.append([i, s.get("split"), s.get("epoch"), s.get("file_idx"), s.get("rg_idx"), s.get("num_files"),
                     s.get("rows"), s.get("tokens_used"), s.get("tokens_cropped")])  # fmt: skip
    return rows


def training_section(index, record):
    meta, stage = record["meta"], record["stage"]
    title = STAGE_TITLES.get(stage, stage) if stage else "training"
    where = f"`{PHASE_DIRS[stage]}/{record['model_tag']}`, " if stage in PHASE_DIRS and record.get("model_tag") else ""
    lines = [f"### {index + 1}. {title}: {where}step {fmt(meta['step'])}", ""]
    git = meta.get("git") or {}
    if git.get("commit"):
        dirty = {True: " (with uncommitted changes)", False: " (clean)"}.get(git.get("dirty"), "")
        lines += [
            f"Code: nanochat commit `{git['commit']}`{dirty}; checkpoint format {meta.get('format_version')}.",
            "",
        ]

    # configuration
    if meta.get("user_config"):
        lines += ["#### Run settings (command line)", ""]
        lines += table(["flag", "value"], [[k, v] for k, v in meta["user_config"].items()])
    if meta.get("hparams"):
        lines += ["#### Derived hyperparameters (nanochat/dial.py)", ""]
        rows = [[k, v] for k, v in meta["hparams"].items() if k != "model_config"]
        lines += table(["name", "value"], rows)

    # batch, optimizer and schedules
    batch = [(k, meta[k]) for k in ("total_batch_size", "device_batch_size", "grad_accum_steps", "world_size",
                                    "max_seq_len", "num_iterations", "num_steps") if k in meta]  # fmt: skip
    if batch:
        lines += ["#### Batch", ""]
        lines += table(["", ""], [[label_of(k), v] for k, v in batch])
    rows, note = optimizer_rows(record)
    if rows or meta.get("hparams"):
        lines += ["#### Optimizer and schedules", ""]
    if rows:
        lines += table(["group", "optimizer", "tensors", "peak LR", "betas / momentum", "eps", "weight decay"], rows)
        if note:
            lines += [note, ""]
    if isinstance(meta.get("optimizer_config"), dict):
        lines += [f"GPT.setup_optimizer arguments: {fmt(meta['optimizer_config'])}.", ""]
    if meta.get("optimizer_source"):
        lines += [f"Optimizer state (moments) at the start: {meta['optimizer_source']}.", ""]
    lines += schedule_lines(meta.get("hparams"))

    # data
    data_lines = []
    if meta.get("data"):
        data = meta["data"] if isinstance(meta["data"], dict) else {"source": meta["data"]}
        data_lines += table(["", ""], [[k, shorten_list(v)] for k, v in data.items() if not is_record_list(v)])
        for k, v in data.items():
            if is_record_list(v):
                data_lines += [f"{k}:", ""] + records_table(v)
    if isinstance(meta.get("data_position"), dict):
        data_lines += table(["data position", ""], list(meta["data_position"].items()))
    tokens = tokens_seen(record)
    if tokens:
        data_lines += [f"Tokens seen: {fmt(tokens[0])} ({tokens[1]}).", ""]
    states = meta.get("dataloader_state")
    if isinstance(states, dict):
        states = [states]
    if states and all("file_idx" in s for s in states):  # PretrainLoader
        data_lines += [
            (
                f"Dataloader state at this step ({len(states)} slice(s) of the stream; `file_idx`/`rg_idx` = next "
                "parquet file / row group to read; rows of T+1 tokens packed so far):"
            ),
            "",
        ]
        header = ["slice", "split", "epoch", "file_idx", "rg_idx", "files", "rows", "tokens used", "tokens cropped"]
        data_lines += table(header, dataloader_rows(states))
    elif states:  # another loader (ChatLoader): its scalar fields as they are
        keys = list(dict.fromkeys(k for s in states for k, v in s.items() if k != "version" and is_number(v)))
        data_lines += [
            (
                f"Dataloader state at this step ({len(states)} slice(s) of the conversation stream; `cursor` = next "
                "conversation index, `placed` = conversations packed into rows so far):"
            ),
            "",
        ]
        data_lines += table(["slice", *keys], [[i] + [s.get(k, "-") for k in keys] for i, s in enumerate(states)])
    if data_lines:
        lines += ["#### Data", ""] + data_lines

    # hardware and time
    hw = []
    run = meta.get("run_info") or {}
    for k, v in run.items():
        hw.append([RUN_INFO_LABELS.get(k, k), v])
    uc = meta.get("user_config") or {}
    if "world_size" in meta and "device_count" not in run:
        hw.append(["processes (world size)", meta["world_size"]])
    for k in ("device_type", "dtype"):
        if uc.get(k) and k not in run:
            hw.append([k, uc[k]])
    loop = meta.get("loop_state") or {}
    if "total_training_time" in loop:
        t = loop["total_training_time"]
        hw.append(["training time, timed steps only", f"{t:,.1f} s ({t / 3600:.2f} h)"])
    if hw:
        lines += ["#### Hardware and time", ""] + table(["", ""], hw)

    lines += metrics_lines(meta)
    return lines


def label_of(key):
    return {
        "total_batch_size": "tokens per optimizer step",
        "device_batch_size": "rows per micro-batch per process",
        "grad_accum_steps": "gradient accumulation steps",
        "world_size": "processes",
        "max_seq_len": "sequence length (tokens)",
        "num_iterations": "optimizer steps planned (-1: one epoch of the mixture)",
        "num_steps": "optimizer steps planned",
    }.get(key, key)


def schedule_lines(h):
    if not h or "warmup_steps" not in h:
        return []
    lines = [
        (
            f"- LR multiplier: linear warmup over {fmt(h['warmup_steps'])} steps, flat, then linear warmdown over the "
            f"last {fmt(h['warmdown_ratio'])} of {fmt(h['num_iterations'])} steps to {fmt(h['final_lr_frac'])} of the "
            "peak (every group)."
        ),
    ]
    if "momentum_warmup_steps" in h:
        lines.append(
            f"- Muon momentum: 0.85 -> 0.97 over the first {fmt(h['momentum_warmup_steps'])} steps, then towards "
            "0.90 across the warmdown."
        )
    if "weight_decay" in h:
        lines.append(f"- Muon weight decay: cosine from {fmt(h['weight_decay'])} at step 0 to 0 at the last step.")
    if "batch_lr_scale" in h:
        lines.append(
            f"- LR scales: batch {fmt(h['batch_lr_scale'])} (every group), width {fmt(h.get('dmodel_lr_scale'))} "
            "(AdamW embedding and unembedding groups)."
        )
    return lines + [""]


def tokens_seen(record):
    """(tokens, how it was obtained) or None."""
    meta = record["meta"]
    if is_number(meta.get("tokens_seen")):
        return meta["tokens_seen"], "recorded by the training script"
    if record["stage"] == "base" and is_number(meta.get("total_batch_size")):
        return meta["step"] * meta["total_batch_size"], (
            f"{fmt(meta['step'])} steps x {fmt(meta['total_batch_size'])} tokens per step"
        )
    return None


def metrics_lines(meta):
    lines = []
    rows = []
    if is_number(meta.get("val_bpb")):
        rows.append(["val bpb (bits per byte, last evaluation)", meta["val_bpb"]])
    metrics = meta.get("metrics") or {}
    series, dict_series = {}, {}
    for name, value in metrics.items():
        if is_number(value):
            rows.append([name, value])
        elif is_step_series(value):
            series[name] = value
        elif is_step_dict_series(value):
            dict_series[name] = value
            step, last = value[-1]
            rows += [[f"{name}: {k} (at step {fmt(step)})", v] for k, v in last.items()]
        elif isinstance(value, list) and value and all(is_number(v) for v in value):
            rows.append([f"{name} (last of {len(value):,} steps)", value[-1]])
            rows.append([f"{name} (min over steps)", min(value)])
        elif isinstance(value, dict) and value and all(is_number(v) for v in value.values()):
            rows += [[f"{name}: {k}", v] for k, v in value.items()]
    for name, value in series.items():
        best = min(value, key=lambda p: p[1]) if "bpb" in name or "loss" in name else max(value, key=lambda p: p[1])
        rows.append([f"{name} (best, at step {fmt(best[0])})", best[1]])
    for key, value in meta.items():
        if key not in CONSUMED_KEYS and is_number(value):
            rows.append([key, value])
    if is_number(meta.get("chatcore")):
        rows.append(["ChatCORE", meta["chatcore"]])
    if rows:
        lines += ["#### Metrics", ""] + table(["metric", "value"], rows)
    for name, value in series.items():
        lines += [f"{name} by step:", ""] + table(["step", name], value)
    for name, value in dict_series.items():
        keys = list(dict.fromkeys(k for _, d in value for k in d))
        lines += [f"{name} by step:", ""] + table(
            ["step", *keys], [[s] + [d.get(k, "-") for k in keys] for s, d in value]
        )
    core = meta.get("core_results")
    if isinstance(core, dict) and core.get("results"):
        lines += [f"CORE per task (CORE = {core['core']:.4f}, the mean of the centered accuracies):", ""]
        rows = [[task, r.get("accuracy"), r.get("centered"), r.get("baseline"), r.get("n")]
                for task, r in core["results"].items()]  # fmt: skip
        lines += table(["task", "accuracy", "centered", "random baseline", "examples"], rows)
    chat = meta.get("chat_results")
    if isinstance(chat, dict) and chat:
        lines += ["Chat evaluations per task:", ""]
        rows = []
        for task, r in chat.items():
            if isinstance(r, dict):
                rows.append([task] + [r.get(k, "-") for k in ("accuracy", "centered", "n")])
            else:
                rows.append([task, r, "-", "-"])
        lines += table(["task", "accuracy", "centered", "examples"], rows)
        settings = meta.get("chat_eval_settings")
        if isinstance(settings, dict):
            lines += [f"Chat evaluation settings (scripts/chat_eval.py, latest run): {fmt(settings)}.", ""]
    return lines


def intended_use_section(records, export_info):
    final = records[-1]
    c = final["meta"]["model_config"]
    stage = final["stage"]
    lines = ["## Intended use and limitations", ""]
    lines.append(
        "- Intended for research and teaching: studying how a small language model is trained end to end, and "
        "comparing training recipes. It is not a product and must not be used for medical, legal, financial or "
        "other high-stakes advice."
    )
    params = count_params(c)["total"]
    lines.append(
        f"- It is small ({fmt(params)} parameters): expect factual errors, made-up answers and weak arithmetic. "
        "None of the evaluations in this card measures harmlessness, bias or refusals: outputs can be wrong, "
        "biased or offensive."
    )
    if stage not in CHAT_STAGES:
        lines.append("- This is a base model: it continues text; it was not trained on the chat format.")
    lines.append(
        f"- Trained on sequences of {fmt(c['sequence_len'])} tokens; the long-window layers see at most that many "
        "earlier tokens, and no evaluation in this card uses a longer context."
    )
    if stage in CHAT_STAGES:
        lines.append(
            "- The chat format has python tool calls (`<|python_start|>...<|python_end|>`). transformers does not run "
            "tools: a caller that wants tool use must execute the call and append `<|output_start|>result"
            "<|output_end|>` itself."
        )
    if export_info:
        lines.append(
            "- The HF tokenizer treats special-token strings in input text (e.g. a user typing `<|user_end|>`) as "
            "special tokens; nanochat's own tokenizer encodes such text as plain bytes. Filter them out of untrusted "
            "input."
        )
    return lines + [""]


# -----------------------------------------------------------------------------
# The card


def render_model_card(records, export_info=None):
    records = [to_record(r) for r in records]
    assert records, "a model card needs at least one checkpoint"
    lines = front_matter(records, export_info)
    lines += title_section(records, export_info)
    lines += how_to_load_section(export_info, records[-1]["stage"])
    lines += summary_section(records)
    lines += architecture_section(records[-1]["meta"]["model_config"])
    lines += tokenizer_section(export_info)
    lines += export_section(export_info)
    lines += ["## Training", ""]
    parent = records[0]["meta"].get("parent")
    if isinstance(parent, dict):
        lines += [
            (
                f"This lineage continues `{parent.get('source')}/{parent.get('model_tag')}` step {parent.get('step')}, "
                "whose checkpoint was not on disk at export: its stage is not described here."
            ),
            "",
        ]
    elif records[0]["stage"] in CHAT_STAGES:
        lines += ["Earlier stages are not listed: this checkpoint's metadata names no parent checkpoint.", ""]
    for i, record in enumerate(records):
        lines += training_section(i, record)
    lines += intended_use_section(records, export_info)
    text = "\n".join(lines).rstrip() + "\n"
    return text


def write_model_card(records, out_path, export_info=None):
    """Write README.md from stage records / metas / checkpoint dirs (oldest stage first). Returns the text."""
    text = render_model_card(records, export_info)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    return text
