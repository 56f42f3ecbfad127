"""
The DCLM CORE metric (DataComp-LM, arXiv 2406.11794): 22 in-context-learning tasks, each scored as accuracy,
centered against its random baseline, (acc - b) / (1 - b), and averaged. A model at chance scores 0, a perfect
one 1, and a model below chance scores negative. Published on this scale: GPT-2 124M 0.1139, 355M 0.1849,
774M 0.2146, 1.5B 0.2565.

The task definitions (file, few-shot count, type, continuation delimiter) are read from the eval bundle's
`core.yaml` and the random baselines from its `eval_meta_data.csv` (in percent); the table below is the DCLM
definition, kept for documentation and to warn when a bundle differs from it. Three task types:
- multiple_choice {query, choices, gold}: one prompt per choice; score each choice by the mean loss of its
  continuation tokens, predict the lowest.
- schema {context_options, continuation, gold}: one prompt per context, same continuation; same scoring.
- language_modeling {context, continuation}: correct iff the greedy (argmax) prediction matches every
  continuation token.

Protocol (as in nanochat, so that numbers compare): items shuffled with Random(1337) and optionally cut to
`max_per_task`; item idx gets few-shot examples drawn with Random(1234 + idx) from the other items; few-shot
blocks are separated by a blank line; sequences start with BOS; the continuation is the common token prefix of
the choices (multiple choice) or the common suffix of the contexts (schema). One difference: few-shot
examples are drawn from the whole shuffled task, not from the cut, so an item's prompt does not depend on
max_per_task.

Speed: the prompts of several examples are tokenized in one call and the rows of several examples go through
one forward pass (right-padded with BOS; only real positions are scored). Under torch.distributed, ranks
stride over the examples of every task and one all_reduce sums the correct counts at the end.

Bundle: `evaluate_core(..., bundle_dir=...)` takes a directory, "fixture" (the small hand-written bundle in
nanochat/data/eval_bundle_fixture, same layout), or a URL; by default $NANOCHAT_EVAL_BUNDLE, else the fixture on
CPU and the public bundle (downloaded once into <base>/eval_bundle/) elsewhere. A malformed bundle raises an
error naming the file and line, never a silently lower score.
"""

import csv
import http.client
import json
import os
import random
import shutil
import time
import urllib.error
import urllib.request
import zipfile

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import PACKAGE_DATA_DIR, get_base_dir, print0

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
FIXTURE_BUNDLE_DIR = os.path.join(PACKAGE_DATA_DIR, "eval_bundle_fixture")
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")

# fmt: off
CORE_TASKS = [
    # DCLM "low variance" set (mlfoundations/dclm eval/additional_aggregation.json; shots, types and random
    # baselines from eval/eval_meta_data_v1.csv). (label, few-shot count, task type, random baseline %, delimiter)
    ("hellaswag_zeroshot",                0, "multiple_choice",   25.0, " "),
    ("jeopardy",                         10, "language_modeling",  0.0, "\nAnswer: "),
    ("bigbench_qa_wikidata",             10, "language_modeling",  0.0, " "),
    ("arc_easy",                         10, "multiple_choice",   25.0, "\nAnswer: "),
    ("arc_challenge",                    10, "multiple_choice",   25.0, "\nAnswer: "),
    ("copa",                              0, "multiple_choice",   50.0, " "),
    ("commonsense_qa",                   10, "multiple_choice",   20.0, " "),
    ("piqa",                             10, "multiple_choice",   50.0, "\nAnswer: "),
    ("openbook_qa",                       0, "multiple_choice",   25.0, " "),
    ("lambada_openai",                    0, "language_modeling",  0.0, " "),
    ("hellaswag",                        10, "multiple_choice",   25.0, " "),
    ("winograd",                          0, "schema",            50.0, " "),
    ("winogrande",                        0, "schema",            50.0, " "),
    ("bigbench_dyck_languages",          10, "language_modeling",  0.0, " "),
    ("agi_eval_lsat_ar",                  3, "multiple_choice",   20.0, " "),
    ("bigbench_cs_algorithms",           10, "language_modeling",  0.0, " "),
    ("bigbench_operators",               10, "language_modeling",  0.0, " "),
    ("bigbench_repeat_copy_logic",       10, "language_modeling",  0.0, " "),
    ("squad",                            10, "language_modeling",  0.0, " "),
    ("coqa",                              0, "language_modeling",  0.0, " "),
    ("boolq",                            10, "multiple_choice",   62.0, "\nAnswer: "),
    ("bigbench_language_identification", 10, "multiple_choice",    9.1, " "),
]
# fmt: on


class BundleError(ValueError):
    """A missing or malformed eval bundle file; the message names the file (and line)."""


# -----------------------------------------------------------------------------
# Getting the bundle


def get_eval_bundle(url=EVAL_BUNDLE_URL, dest_dir=None):
    """
    Download and unzip the eval bundle into dest_dir (default <base>/eval_bundle/) once; later calls (and other
    ranks, which wait on the file lock) find it there. Returns dest_dir.
    """
    from filelock import FileLock  # imported here: only the download path needs it

    dest_dir = dest_dir or os.path.join(get_base_dir(), "eval_bundle")
    if os.path.isfile(os.path.join(dest_dir, "core.yaml")):
        return dest_dir
    parent = os.path.dirname(os.path.abspath(dest_dir))
    os.makedirs(parent, exist_ok=True)
    with FileLock(dest_dir.rstrip("/") + ".lock"):
        if os.path.isfile(os.path.join(dest_dir, "core.yaml")):  # another process finished while we waited
            return dest_dir
        zip_path = dest_dir.rstrip("/") + ".zip"
        tmp_zip = f"{zip_path}.tmp{os.getpid()}"
        tmp_dir = f"{dest_dir.rstrip('/')}.tmp{os.getpid()}"
        try:
            _download(url, tmp_zip)
            os.replace(tmp_zip, zip_path)
            _unzip_bundle(zip_path, tmp_dir, url)
            if os.path.isdir(dest_dir):  # a leftover without core.yaml (e.g. an interrupted manual copy)
                raise BundleError(f"{dest_dir} exists but has no core.yaml; remove it or complete it, then run again")
            os.replace(tmp_dir, dest_dir)
            os.remove(zip_path)
        finally:
            for path in (tmp_zip, zip_path):
                if os.path.exists(path):
                    os.remove(path)
            if os.path.isdir(tmp_dir):
                shutil.rmtree(tmp_dir)
    print0(f"eval bundle ready at {dest_dir}")
    return dest_dir


def _download(url, path, timeout=30):
    offline_help = (
        f"To evaluate offline, download {url} elsewhere and unzip it so that "
        f"{os.path.join(get_base_dir(), 'eval_bundle', 'core.yaml')} exists, or point --bundle / "
        "$NANOCHAT_EVAL_BUNDLE at an unzipped bundle directory, or use --bundle fixture for the small bundle "
        "shipped with nanochat (tests and smoke runs only)."
    )
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        raise RuntimeError(f"could not download the eval bundle from {url}: {e}. {offline_help}") from e
    with response:
        total = int(response.headers.get("Content-Length") or 0)
        done, next_report, t0 = 0, 0.0, time.time()
        with open(path, "wb") as f:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as e:
                    raise RuntimeError(f"download of {url} broke off after {done} bytes: {e}. {offline_help}") from e
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if total and done / total >= next_report:  # a full line every 10%: readable in logs, not just ttys
                    elapsed = time.time() - t0
                    eta = elapsed / done * (total - done)
                    print0(f"downloading {url}: {done / 1e6:.1f}/{total / 1e6:.1f} MB, {elapsed:.0f}s, ETA {eta:.0f}s")
                    next_report += 0.1
    if total and done != total:
        raise RuntimeError(f"download of {url} is truncated: {done} of {total} bytes. {offline_help}")
    print0(f"downloaded {url}: {done / 1e6:.1f} MB in {time.time() - t0:.1f}s")


def _unzip_bundle(zip_path, out_dir, url):
    """Extract; the bundle may sit at the zip root or in one top-level folder (the public zip: eval_bundle/)."""
    extract_dir = out_dir + ".x"
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                bad = zf.testzip()  # CRC check of every member before anything is written
                if bad is not None:
                    raise BundleError(f"{zip_path} (from {url}): member {bad} is corrupt")
                zf.extractall(extract_dir)
        except zipfile.BadZipFile as e:
            raise BundleError(f"{zip_path} (from {url}) is not a valid zip file: {e}") from e
        root = extract_dir
        entries = [e for e in os.listdir(root) if not e.startswith("__MACOSX")]
        if not os.path.isfile(os.path.join(root, "core.yaml")) and len(entries) == 1:
            root = os.path.join(root, entries[0])
        if not os.path.isfile(os.path.join(root, "core.yaml")):
            raise BundleError(f"{zip_path} (from {url}) holds no core.yaml at its root or in a single top folder")
        os.replace(root, out_dir)
    finally:
        if os.path.isdir(extract_dir):
            shutil.rmtree(extract_dir)


def resolve_bundle_dir(bundle=None, device_type=None):
    """
    bundle: a directory, "fixture", or a URL. None -> $NANOCHAT_EVAL_BUNDLE, else the fixture on CPU (the full
    bundle takes hours there and needs the network), else the public bundle (downloaded once).
    """
    bundle = bundle or os.environ.get("NANOCHAT_EVAL_BUNDLE")
    if bundle is None and device_type == "cpu":
        print0(
            "CORE on CPU: using the small fixture bundle (hand-written items, not comparable with published "
            "numbers); pass a bundle directory or URL, or set NANOCHAT_EVAL_BUNDLE, for the DCLM bundle"
        )
        bundle = "fixture"
    bundle = bundle or EVAL_BUNDLE_URL
    if bundle == "fixture":
        return FIXTURE_BUNDLE_DIR
    if "://" in bundle:
        return get_eval_bundle(bundle)
    if not os.path.isdir(bundle):
        raise BundleError(f"eval bundle directory {bundle} does not exist (give a directory, a URL or 'fixture')")
    return bundle


# -----------------------------------------------------------------------------
# Reading and validating the bundle


def load_core_config(bundle_dir):
    """core.yaml -> list of {label, path, num_fewshot, task_type, delimiter}."""
    import yaml

    path = os.path.join(bundle_dir, "core.yaml")
    if not os.path.isfile(path):
        raise BundleError(f"{path}: missing (the eval bundle needs core.yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when present
    except yaml.YAMLError as e:
        raise BundleError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("icl_tasks"), list) or not config["icl_tasks"]:
        raise BundleError(f"{path}: expected a non-empty 'icl_tasks' list")
    tasks, seen = [], set()
    for i, entry in enumerate(config["icl_tasks"]):
        where = f"{path}: icl_tasks[{i}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: expected a mapping, got {entry!r}")
        missing = [k for k in ("label", "dataset_uri", "num_fewshot", "icl_task_type") if k not in entry]
        if missing:
            raise BundleError(f"{where}: missing {', '.join(missing)}")
        label = entry["label"]
        if label in seen:
            raise BundleError(f"{where}: duplicate label {label!r}")
        seen.add(label)
        shots = entry["num_fewshot"]
        shots = shots[0] if isinstance(shots, list) and len(shots) == 1 else shots  # DCLM writes [k]
        if not isinstance(shots, int) or shots < 0:
            raise BundleError(
                f"{where} ({label}): num_fewshot must be an int >= 0 or [int], got {entry['num_fewshot']!r}"
            )
        task_type = entry["icl_task_type"]
        if task_type not in TASK_TYPES:
            raise BundleError(f"{where} ({label}): icl_task_type {task_type!r} is not one of {TASK_TYPES}")
        delimiter = entry.get("continuation_delimiter", " ")
        if not isinstance(delimiter, str):
            raise BundleError(f"{where} ({label}): continuation_delimiter must be a string, got {delimiter!r}")
        data_path = os.path.join(bundle_dir, "eval_data", entry["dataset_uri"])
        tasks.append(
            {"label": label, "path": data_path, "num_fewshot": shots, "task_type": task_type, "delimiter": delimiter}
        )
    return tasks


def load_baselines(bundle_dir):
    """eval_meta_data.csv -> {task label: random baseline as a fraction}."""
    path = os.path.join(bundle_dir, "eval_meta_data.csv")
    if not os.path.isfile(path):
        raise BundleError(f"{path}: missing (the eval bundle needs the random baselines)")
    baselines = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "Eval Task" not in columns or "Random baseline" not in columns:
            raise BundleError(f"{path}: needs columns 'Eval Task' and 'Random baseline', has {columns}")
        for row in reader:
            try:
                baseline = float(row["Random baseline"])
            except (TypeError, ValueError):
                raise BundleError(
                    f"{path}:{reader.line_num}: Random baseline {row['Random baseline']!r} is not a number"
                ) from None
            if not 0.0 <= baseline < 100.0:
                raise BundleError(f"{path}:{reader.line_num}: Random baseline {baseline} is not a percent in [0, 100)")
            baselines[row["Eval Task"]] = baseline / 100.0
    return baselines


REQUIRED_FIELDS = {
    "multiple_choice": {"query": str, "choices": list, "gold": int},
    "schema": {"context_options": list, "continuation": str, "gold": int},
    "language_modeling": {"context": str, "continuation": str},
}


def _check_item(item, task_type):
    """A message saying what is wrong with one JSONL item, or None."""
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"
    fields = REQUIRED_FIELDS[task_type]
    missing = [k for k in fields if k not in item]
    if missing:
        return f"missing field(s) {', '.join(missing)} required by {task_type}"
    for key, kind in fields.items():
        if not isinstance(item[key], kind) or isinstance(item[key], bool):
            return f"field {key!r} must be {kind.__name__}, got {type(item[key]).__name__}"
    options = {"multiple_choice": "choices", "schema": "context_options"}.get(task_type)
    if options is not None:
        if len(item[options]) < 2 or not all(isinstance(s, str) for s in item[options]):
            return f"field {options!r} must be a list of at least 2 strings"
        if not 0 <= item["gold"] < len(item[options]):
            return f"gold {item['gold']} is out of range for {len(item[options])} {options}"
    text = item["query"] if task_type == "multiple_choice" else item["continuation"]
    if not text.strip():
        return "empty query" if task_type == "multiple_choice" else "empty continuation"
    return None


def load_task_data(path, task_type):
    """One task's JSONL -> list of items, every line checked; errors name the file and line."""
    if not os.path.isfile(path):
        raise BundleError(f"{path}: missing task data file")
    items = []
    with open(path, encoding="utf-8") as f:
        for line_num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise BundleError(f"{path}:{line_num}: malformed JSON line ({e.msg}); is the file truncated?") from None
            problem = _check_item(item, task_type)
            if problem:
                raise BundleError(f"{path}:{line_num}: {problem}")
            items.append(item)
    if not items:
        raise BundleError(f"{path}: holds no items")
    return items


def check_against_dclm(tasks, baselines):
    """Ways in which a bundle's task definitions differ from the DCLM CORE table (empty list: same)."""
    reference = {t[0]: t for t in CORE_TASKS}
    differences = []
    for task in tasks:
        label = task["label"]
        if label not in reference:
            differences.append(f"{label} is not a DCLM CORE task")
            continue
        _, shots, task_type, baseline_pct, delimiter = reference[label]
        got = (task["num_fewshot"], task["task_type"], task["delimiter"], round(baselines[label] * 100, 3))
        want = (shots, task_type, delimiter, baseline_pct)
        if got != want:
            differences.append(f"{label}: (shots, type, delimiter, baseline %) = {got!r}, DCLM has {want!r}")
    missing = sorted(set(reference) - {t["label"] for t in tasks})
    if missing:
        differences.append(f"bundle lacks CORE task(s) {', '.join(missing)}")
    return differences


def load_bundle(bundle_dir, tasks=None):
    """Validated task configs (each with 'baseline' and 'items') for the chosen tasks, in core.yaml order."""
    config = load_core_config(bundle_dir)
    baselines = load_baselines(bundle_dir)
    meta_path = os.path.join(bundle_dir, "eval_meta_data.csv")
    for task in config:
        if task["label"] not in baselines:
            raise BundleError(f"{meta_path}: no 'Random baseline' row for task {task['label']!r} of core.yaml")
        task["baseline"] = baselines[task["label"]]
    differences = check_against_dclm(config, baselines)
    if differences:
        print0(
            f"WARNING: {bundle_dir} differs from the DCLM CORE definition, so its CORE does not compare with "
            f"published numbers: {'; '.join(differences)}"
        )
    if tasks is not None:
        wanted = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
        known = [t["label"] for t in config]
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise BundleError(f"unknown task(s) {unknown}; {bundle_dir}/core.yaml has {known}")
        config = [t for t in config if t["label"] in wanted]
    for task in config:
        task["items"] = load_task_data(task["path"], task["task_type"])
        if task["num_fewshot"] >= len(task["items"]):
            raise BundleError(
                f"{task['path']}: {len(task['items'])} items cannot give {task['num_fewshot']} few-shot "
                f"examples plus the item itself (task {task['label']})"
            )
    return config


# -----------------------------------------------------------------------------
# Prompts (plain string formatting; few-shot blocks end with a blank line)


def render_prompts_mc(item, delimiter, fewshot_examples=()):
    """One prompt per choice: few-shot blocks, then query + delimiter + choice."""
    prefix = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot_examples)
    return [f"{prefix}{item['query']}{delimiter}{choice}" for choice in item["choices"]]


def render_prompts_schema(item, delimiter, fewshot_examples=()):
    """One prompt per context option, all ending in the same continuation."""
    prefix = "".join(
        f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in fewshot_examples
    )
    return [f"{prefix}{context}{delimiter}{item['continuation']}" for context in item["context_options"]]


def render_prompts_lm(item, delimiter, fewshot_examples=()):
    """
    [prompt without continuation, prompt with it]. Contexts are stripped, and the prompt without is stripped at
    its end, so a delimiter's trailing space joins the first continuation token (" Paris") as in the data.
    """
    prefix = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in fewshot_examples)
    prompt = f"{prefix}{item['context'].strip()}{delimiter}"
    return [prompt.strip(), prompt + item["continuation"]]


RENDERERS = {
    "multiple_choice": render_prompts_mc,
    "schema": render_prompts_schema,
    "language_modeling": render_prompts_lm,
}


def shuffle_task_items(items):
    """The evaluation order: Random(1337), the same on every rank; max_per_task keeps a prefix of it."""
    items = list(items)
    random.Random(1337).shuffle(items)
    return items


def sample_fewshot(items, idx, num_fewshot):
    """Few-shot examples for item idx: Random(1234 + idx) over the other items."""
    if num_fewshot == 0:
        return []
    rng = random.Random(1234 + idx)
    others = [i for i in range(len(items)) if i != idx]
    return [items[i] for i in rng.sample(others, num_fewshot)]


# -----------------------------------------------------------------------------
# Tokens: continuation spans and left-truncation


def _common_prefix_len(seqs):
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _common_suffix_len(seqs):
    n = min(len(s) for s in seqs)
    for i in range(1, n + 1):
        if any(s[-i] != seqs[0][-i] for s in seqs):
            return i - 1
    return n


def continuation_spans(token_rows, task_type):
    """
    [(start, end)] per row: the scored continuation is row[start:end]. Multiple choice: after the common prefix of
    the choices (at least the last token of each row is scored, should one choice be a prefix of another).
    Schema: the common suffix. Language modeling: rows are [without, with]; one span in the 'with' row.
    As in nanochat, leading tokens that all choices share are context, not scored ("the cat" / "the dog").
    """
    if task_type == "multiple_choice":
        p = _common_prefix_len(token_rows)
        return [(min(p, len(row) - 1), len(row)) for row in token_rows]
    if task_type == "schema":
        s = _common_suffix_len(token_rows)
        return [(len(row) - s, len(row)) for row in token_rows]
    without, with_ = token_rows
    return [(_common_prefix_len([without, with_]), len(with_))]


def left_truncate(row, start, end, max_len):
    """
    Keep BOS and the last max_len - 1 tokens (the model was trained on rows that start with BOS). Returns
    (row, start, end); the continuation always survives, so a continuation that alone does not fit is an error.
    """
    if max_len is None or len(row) <= max_len:
        return row, start, end
    drop = len(row) - max_len
    if start - drop < 1:  # at least BOS must remain before the continuation
        raise ValueError(f"continuation of {end - start} tokens does not fit a context of {max_len} tokens")
    return row[:1] + row[1 + drop :], start - drop, end - drop


def prepare_examples(task, indices, tokenizer, max_len):
    """Render and tokenize (one encode call) items `indices` -> list of (rows, spans) per example."""
    render = RENDERERS[task["task_type"]]
    items, delimiter = task["items"], task["delimiter"]
    all_prompts, counts = [], []
    for idx in indices:
        prompts = render(items[idx], delimiter, sample_fewshot(items, idx, task["num_fewshot"]))
        all_prompts.extend(prompts)
        counts.append(len(prompts))
    threads = min(8, os.cpu_count() or 1)
    encoded = tokenizer.encode(all_prompts, prepend=tokenizer.get_bos_token_id(), num_threads=threads)
    examples, pos = [], 0
    for idx, count in zip(indices, counts):
        rows = encoded[pos : pos + count]
        pos += count
        spans = continuation_spans(rows, task["task_type"])
        if task["task_type"] == "language_modeling":
            rows = rows[1:]  # only the row with the continuation goes through the model
        for start, end in spans:
            if not 1 <= start < end:  # a scored token needs at least BOS before it
                raise ValueError(
                    f"{task['path']}: item {idx} (after shuffling): continuation span {start}:{end} in tokens is "
                    "empty or has no context before it"
                )
        try:
            truncated = [left_truncate(row, s, e, max_len) for row, (s, e) in zip(rows, spans)]
        except ValueError as e:
            raise ValueError(f"{task['path']}: item {idx} (after shuffling): {e}") from None
        examples.append(([t[0] for t in truncated], [(t[1], t[2]) for t in truncated]))
    return examples


# -----------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score_rows(model, rows, spans, pad_id, device):
    """
    One forward pass over rows (right-padded with pad_id). For each row: the mean loss (nats) over its span and
    whether the argmax prediction matches every span token. Returns two lists.
    """
    B, T = len(rows), max(len(r) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T - 1), dtype=torch.bool)  # position t predicts token t + 1
    for b, (row, (start, end)) in enumerate(zip(rows, spans)):
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, start - 1 : end - 1] = True
    ids, mask = ids.to(device), mask.to(device)
    logits = model(ids)  # (B, T, V)
    selected = logits[:, :-1][mask].float()  # (N, V): only scored positions, not B*T*V of log-softmax
    targets = ids[:, 1:][mask]  # (N,)
    losses = F.cross_entropy(selected, targets, reduction="none")
    wrong = (selected.argmax(dim=-1) != targets).long()
    row_of = mask.nonzero()[:, 0]  # (N,) which row each scored position belongs to
    loss_sum = torch.zeros(B, device=device).index_add_(0, row_of, losses)
    wrong_sum = torch.zeros(B, dtype=torch.long, device=device).index_add_(0, row_of, wrong)
    counts = mask.sum(dim=1)
    return (loss_sum / counts).tolist(), (wrong_sum == 0).tolist()


def is_correct(task_type, gold, mean_losses, all_match):
    if task_type == "language_modeling":
        return bool(all_match[0])
    return min(range(len(mean_losses)), key=lambda i: mean_losses[i]) == gold  # argmin, first on ties


def pack_batches(examples, batch_size):
    """Group consecutive examples so that each group has at most batch_size rows (one example may exceed it)."""
    batches, rows = [], 0
    for example in examples:
        n = len(example[1][0])
        if batches and rows + n <= batch_size:
            batches[-1].append(example)
            rows += n
        else:
            batches.append([example])
            rows = n
    return batches


def evaluate_examples(model, tokenizer, task, indices, device, batch_size=32, max_len=None, chunk_size=256):
    """Correct (0/1) per example index, in the order given. Rows of several examples share a forward pass."""
    pad_id = tokenizer.get_bos_token_id()
    results = {}
    for c in range(0, len(indices), chunk_size):
        chunk = indices[c : c + chunk_size]
        examples = list(zip(chunk, prepare_examples(task, chunk, tokenizer, max_len)))  # (idx, (rows, spans))
        examples.sort(key=lambda ex: max(len(r) for r in ex[1][0]))  # similar lengths together: less padding
        for batch in pack_batches(examples, batch_size):
            rows = [row for _, (ex_rows, _) in batch for row in ex_rows]
            spans = [span for _, (_, ex_spans) in batch for span in ex_spans]
            mean_losses, all_match = score_rows(model, rows, spans, pad_id, device)
            pos = 0
            for idx, (ex_rows, _) in batch:
                n = len(ex_rows)
                gold = task["items"][idx].get("gold")
                results[idx] = int(
                    is_correct(task["task_type"], gold, mean_losses[pos : pos + n], all_match[pos : pos + n])
                )
                pos += n
    return [results[i] for i in indices]


def centered_accuracy(accuracy, baseline):
    """(acc - b) / (1 - b) with b the random baseline as a fraction: 0 at chance, 1 when perfect."""
    return (accuracy - baseline) / (1.0 - baseline)


def evaluate_core(model, tokenizer, device, bundle_dir=None, tasks=None, max_per_task=-1, batch_size=32):
    """
    CORE of a model returning logits (B, T, V) from model(idx). tasks: None (all of core.yaml), a list or a
    comma-separated string of labels. max_per_task <= 0: all items. Returns
    {"core", "results": {label: {"accuracy", "centered", "n", "baseline"}}, "examples_per_s", "seconds", "bundle"}.
    """
    is_ddp = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if is_ddp else (0, 1)
    bundle_dir = resolve_bundle_dir(bundle_dir, torch.device(device).type)
    task_list = load_bundle(bundle_dir, tasks)
    assert task_list, f"no tasks to evaluate (tasks={tasks!r})"
    config = getattr(model, "config", None)
    max_len = getattr(config, "sequence_len", None)

    for task in task_list:
        task["items"] = shuffle_task_items(task["items"])
    sizes = [
        len(t["items"]) if max_per_task is None or max_per_task <= 0 else min(max_per_task, len(t["items"]))
        for t in task_list
    ]
    total = sum(sizes)
    where = f"{world_size} ranks" if world_size > 1 else "1 process"
    print0(f"CORE: {len(task_list)} tasks, {total} examples from {bundle_dir} on {where}, batch {batch_size} rows")

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    counts = torch.zeros((len(task_list), 2), dtype=torch.long, device=device)  # (correct, n) per task
    t0 = time.time()
    done = 0
    for i, (task, n) in enumerate(zip(task_list, sizes)):
        t_task = time.time()
        indices = list(range(rank, n, world_size))
        correct = evaluate_examples(model, tokenizer, task, indices, device, batch_size, max_len)
        counts[i, 0], counts[i, 1] = sum(correct), len(correct)
        done += n
        elapsed = time.time() - t0
        eta = elapsed / done * (total - done) if done else 0.0
        local = "" if world_size == 1 else " (rank 0 shard)"
        acc = sum(correct) / max(len(correct), 1)
        print0(
            f"[{i + 1:2d}/{len(task_list)}] {task['label']:<33} acc{local} {acc:.4f}  n {n:5d}  "
            f"{time.time() - t_task:6.1f}s  ETA {eta:.0f}s"
        )
    if is_ddp:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    if hasattr(model, "train"):
        model.train(was_training)
    seconds = time.time() - t0

    results = {}
    for task, (correct, n) in zip(task_list, counts.tolist()):
        accuracy = correct / n
        results[task["label"]] = {
            "accuracy": accuracy,
            "centered": centered_accuracy(accuracy, task["baseline"]),
            "n": n,
            "baseline": task["baseline"],
        }
    core = sum(r["centered"] for r in results.values()) / len(results)
    examples_per_s = total / max(seconds, 1e-9)
    print0(f"CORE {core:.4f} over {len(results)} tasks ({total} examples, {seconds:.1f}s, {examples_per_s:.1f} ex/s)")
    return {
        "core": core,
        "results": results,
        "examples_per_s": examples_per_s,
        "seconds": seconds,
        "bundle": bundle_dir,
    }


# -----------------------------------------------------------------------------
# Writing results


def write_core_results(out, csv_path, json_path=None, extra=None):
    """Per-task CSV (Task, Accuracy, Centered, Baseline, N; last row CORE) and the full result as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    with open(csv_path + ".tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Task", "Accuracy", "Centered", "Baseline", "N"])
        for label, r in out["results"].items():
            writer.writerow([label, f"{r['accuracy']:.6f}", f"{r['centered']:.6f}", f"{r['baseline']:.4f}", r["n"]])
        writer.writerow(["CORE", "", f"{out['core']:.6f}", "", sum(r["n"] for r in out["results"].values())])
    os.replace(csv_path + ".tmp", csv_path)
    if json_path:
        with open(json_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({**(extra or {}), **out}, f, indent=2)
        os.replace(json_path + ".tmp", json_path)
