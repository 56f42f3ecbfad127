"""CORE metric: rigged models, centering, exact prompts, spans, truncation, batching, ranks, bundle errors, download."""

import http.server
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanochat import core_eval as ce
from nanochat.common import REPO_DIR

FIXTURE = ce.FIXTURE_BUNDLE_DIR
LABELS = [t[0] for t in ce.CORE_TASKS]


# -----------------------------------------------------------------------------
# Helpers: a tokenizer trained here, and models whose right answers are known


def fixture_texts():
    texts = []
    for root, _, files in os.walk(os.path.join(FIXTURE, "eval_data")):
        for name in sorted(files):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                texts.append(f.read())
    return texts


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine: one intra-op thread avoids ms of thread sync per op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from nanochat.tokenizer import Tokenizer

    return Tokenizer.train_from_iterator(iter(fixture_texts() * 2), vocab_size=400)


class RiggedModel(torch.nn.Module):
    """
    Logit 20 (others 0) on the next token of the preferred sequence that the row has followed so far, read
    from a trie of preferred token sequences; once a row leaves every preferred sequence, all logits are 0.
    """

    def __init__(self, preferred, vocab_size, sequence_len=None):
        super().__init__()
        self.trie = {}
        for seq in preferred:
            node = self.trie
            for token in seq:
                node = node.setdefault(token, {})
        self.vocab_size = vocab_size
        self.config = SimpleNamespace(sequence_len=sequence_len)
        self.seen_rows = []

    def forward(self, idx):
        B, T = idx.shape
        hits = ([], [], [])  # (row, position, token) of every preferred next token
        for b, row in enumerate(idx.tolist()):
            self.seen_rows.append(row)
            node = self.trie
            for t, token in enumerate(row):
                node = node.get(token)
                if not node:
                    break
                hits[0].append(b), hits[1].append(t), hits[2].append(next(iter(node)))
        logits = torch.zeros(B, T, self.vocab_size)
        logits[hits] = 20.0
        return logits


class BigramModel(torch.nn.Module):
    """Random logits that depend on the current token only: deterministic and blind to padding."""

    def __init__(self, vocab_size, seed=0, sequence_len=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab_size, vocab_size, generator=g) * 3
        self.config = SimpleNamespace(sequence_len=sequence_len)

    def forward(self, idx):
        return self.table[idx]  # (B, T, V)


def preferred_rows(tokenizer, task, rigged_for, max_len=None):
    """
    For every item of a task (in evaluation order, with its few-shot examples): the token row a rigged model
    should follow. rigged_for="gold": the gold choice / context / continuation; "against": a wrong one.
    """
    items = ce.shuffle_task_items(task["items"])
    render = ce.RENDERERS[task["task_type"]]
    bos = tokenizer.get_bos_token_id()
    rows = []
    for idx, item in enumerate(items):
        fewshot = ce.sample_fewshot(items, idx, task["num_fewshot"])
        if task["task_type"] == "language_modeling":
            if rigged_for == "against":  # a continuation that differs from the first character on
                item = {**item, "continuation": "zq" + item["continuation"]}
            prompts = render(item, task["delimiter"], fewshot)
            token_rows = [tokenizer.encode(p, prepend=bos) for p in prompts]
            span = ce.continuation_spans(token_rows, "language_modeling")[0]
            row = token_rows[1]
        else:
            prompts = render(item, task["delimiter"], fewshot)
            token_rows = [tokenizer.encode(p, prepend=bos) for p in prompts]
            spans = ce.continuation_spans(token_rows, task["task_type"])
            pick = item["gold"] if rigged_for == "gold" else (item["gold"] + 1) % len(prompts)
            row, span = token_rows[pick], spans[pick]
        if max_len is not None:
            row = ce.left_truncate(row, *span, max_len)[0]
        rows.append(row)
    return rows


def load_task(label):
    return ce.load_bundle(FIXTURE, [label])[0]


# -----------------------------------------------------------------------------
# The fixture bundle and the task table


def test_fixture_bundle_matches_dclm_core_definition():
    """The shipped fixture has all 22 CORE tasks with DCLM's labels, shots, types, delimiters and baselines."""
    config = ce.load_core_config(FIXTURE)
    baselines = ce.load_baselines(FIXTURE)
    assert [t["label"] for t in config] == LABELS
    assert ce.check_against_dclm(config, baselines) == []
    assert len(ce.CORE_TASKS) == 22 and {t[2] for t in ce.CORE_TASKS} == set(ce.TASK_TYPES)
    tasks = ce.load_bundle(FIXTURE)
    for task in tasks:
        assert len(task["items"]) >= task["num_fewshot"] + 1, task["label"]
    delimiters = {t["label"]: t["delimiter"] for t in tasks}
    assert {k for k, v in delimiters.items() if v != " "} == {"jeopardy", "arc_easy", "arc_challenge", "piqa", "boolq"}
    assert all(delimiters[k] == "\nAnswer: " for k in ("jeopardy", "arc_easy", "arc_challenge", "piqa", "boolq"))


def test_dclm_table_differences_are_reported(tmp_path):
    """check_against_dclm names a task whose few-shot count differs and CORE tasks a bundle lacks."""
    bundle = copy_fixture(tmp_path)
    path = os.path.join(bundle, "core.yaml")
    text = (
        Path(path)
        .read_text()
        .replace(
            "label: copa\n  dataset_uri: commonsense_reasoning/copa.jsonl\n  num_fewshot: [0]",
            "label: copa\n  dataset_uri: commonsense_reasoning/copa.jsonl\n  num_fewshot: [2]",
        )
    )
    Path(path).write_text(text)
    config = ce.load_core_config(bundle)
    differences = ce.check_against_dclm(config[:6], ce.load_baselines(bundle))  # up to copa
    assert any(d.startswith("copa:") for d in differences)
    assert any("lacks CORE task(s)" in d and "squad" in d for d in differences)


# -----------------------------------------------------------------------------
# Scoring with rigged models


@pytest.mark.parametrize("rigged_for", ["gold", "against"])
def test_rigged_models_score_one_and_zero_on_every_task(tokenizer, rigged_for):
    """A model that follows the gold continuation is right on all 22 tasks (3 types); one rigged against, never."""
    for label in LABELS:
        task = load_task(label)
        model = RiggedModel(preferred_rows(tokenizer, task, rigged_for), tokenizer.get_vocab_size())
        out = ce.evaluate_core(model, tokenizer, "cpu", bundle_dir="fixture", tasks=[label], batch_size=16)
        result = out["results"][label]
        assert result["n"] == len(task["items"])
        assert result["accuracy"] == (1.0 if rigged_for == "gold" else 0.0), (label, task["task_type"])
        if rigged_for == "gold":
            assert out["core"] == 1.0
        else:
            assert out["core"] == pytest.approx(-task["baseline"] / (1 - task["baseline"]))


def test_centering_formula_and_core_mean(tokenizer):
    """centered = (acc - b)/(1 - b); CORE is the mean of the centered values over the evaluated tasks."""
    assert ce.centered_accuracy(0.25, 0.25) == 0.0
    assert ce.centered_accuracy(1.0, 0.25) == 1.0
    assert ce.centered_accuracy(0.625, 0.25) == pytest.approx(0.5)
    assert ce.centered_accuracy(0.0, 0.20) == pytest.approx(-0.25)  # LSAT-AR at 0 accuracy (nanochat logs)
    assert ce.centered_accuracy(0.0, 0.091) == pytest.approx(-0.1001, abs=1e-4)  # language ID at 0 accuracy
    assert ce.centered_accuracy(0.5, 0.0) == 0.5
    # against-rigged on copa (baseline 50%) and jeopardy (0%): centered -1 and 0, CORE -0.5
    rows = preferred_rows(tokenizer, load_task("copa"), "against") + preferred_rows(
        tokenizer, load_task("jeopardy"), "against"
    )
    model = RiggedModel(rows, tokenizer.get_vocab_size())
    out = ce.evaluate_core(model, tokenizer, "cpu", bundle_dir="fixture", tasks="copa,jeopardy")
    assert out["results"]["copa"]["centered"] == -1.0 and out["results"]["jeopardy"]["centered"] == 0.0
    assert out["core"] == -0.5
    assert out["examples_per_s"] > 0


def test_mean_loss_not_total_loss_picks_the_choice():
    """Multiple choice compares the MEAN loss per continuation token, so a longer right answer can win."""
    # row 0: 1-token continuation with loss log(V) (uniform); row 1: 3 tokens, the first uncertain, two certain
    V = 8
    rows = [[0, 1, 2], [0, 1, 3, 4, 5]]
    spans = [(2, 3), (2, 5)]

    class Fixed(torch.nn.Module):
        def forward(self, idx):
            logits = torch.zeros(*idx.shape, V)
            logits[1, 2, 4] = logits[1, 3, 5] = 30.0  # row 1 predicts 4 after 3 and 5 after 4
            return logits

    mean_losses, _ = ce.score_rows(Fixed(), rows, spans, pad_id=0, device="cpu")
    assert mean_losses[0] == pytest.approx(torch.log(torch.tensor(8.0)).item())
    assert mean_losses[1] == pytest.approx(mean_losses[0] / 3, rel=1e-4)
    assert ce.is_correct("multiple_choice", 1, mean_losses, [False, False])


# -----------------------------------------------------------------------------
# Prompts, few-shot sampling, spans


def test_prompts_render_exactly():
    """Few-shot blocks end with a blank line, delimiters sit before every answer, LM 'without' is stripped."""
    shots = [{"query": "Q1?", "choices": ["a1", "b1"], "gold": 1}, {"query": "Q2?", "choices": ["a2", "b2"], "gold": 0}]
    item = {"query": "Q3?", "choices": ["yes", "no"], "gold": 0}
    assert ce.render_prompts_mc(item, "\nAnswer: ", shots) == [
        "Q1?\nAnswer: b1\n\nQ2?\nAnswer: a2\n\nQ3?\nAnswer: yes",
        "Q1?\nAnswer: b1\n\nQ2?\nAnswer: a2\n\nQ3?\nAnswer: no",
    ]
    assert ce.render_prompts_mc(item, " ") == ["Q3? yes", "Q3? no"]

    shots = [
        {
            "context_options": ["Ann hugged Bo because Ann", "Ann hugged Bo because Bo"],
            "continuation": "was sad.",
            "gold": 1,
        }
    ]
    item = {
        "context_options": [
            "The cup held less than the jug because the cup",
            "The cup held less than the jug because the jug",
        ],
        "continuation": "was small.",
        "gold": 0,
    }
    assert ce.render_prompts_schema(item, " ", shots) == [
        "Ann hugged Bo because Bo was sad.\n\nThe cup held less than the jug because the cup was small.",
        "Ann hugged Bo because Bo was sad.\n\nThe cup held less than the jug because the jug was small.",
    ]

    shots = [
        {"context": "SCIENCE: H2O is this", "continuation": "water"},
        {"context": " MUSIC: It has 88 keys \n", "continuation": "the piano"},
    ]
    item = {"context": "  CAPITALS: The capital of France  ", "continuation": "Paris"}
    fewshot_text = "SCIENCE: H2O is this\nAnswer: water\n\nMUSIC: It has 88 keys\nAnswer: the piano\n\n"
    assert ce.render_prompts_lm(item, "\nAnswer: ", shots) == [
        fewshot_text + "CAPITALS: The capital of France\nAnswer:",
        fewshot_text + "CAPITALS: The capital of France\nAnswer: Paris",
    ]
    assert ce.render_prompts_lm({"context": "The sky is", "continuation": "blue"}, " ") == [
        "The sky is",
        "The sky is blue",
    ]


def test_fixture_item_prompt_with_its_fewshot_examples():
    """A real fixture item renders with exactly its Random(1234 + idx) few-shot examples, blank-line separated."""
    task = load_task("agi_eval_lsat_ar")  # 3-shot
    items = ce.shuffle_task_items(task["items"])
    idx = 2
    chosen = random.Random(1234 + idx).sample([i for i in range(len(items)) if i != idx], 3)
    expected_prefix = "".join(f"{items[i]['query']} {items[i]['choices'][items[i]['gold']]}\n\n" for i in chosen)
    prompts = ce.render_prompts_mc(items[idx], " ", ce.sample_fewshot(items, idx, 3))
    assert prompts == [f"{expected_prefix}{items[idx]['query']} {choice}" for choice in items[idx]["choices"]]
    assert prompts[0].count("\n\n") == 3


def test_fewshot_sampling_excludes_the_item_and_is_seeded():
    """Few-shot examples never include the item itself, are distinct, and are reproducible per index."""
    items = [{"id": i} for i in range(12)]
    for idx in range(12):
        shots = ce.sample_fewshot(items, idx, 10)
        assert len(shots) == 10 and items[idx] not in shots and len({s["id"] for s in shots}) == 10
        assert shots == ce.sample_fewshot(items, idx, 10)
    assert ce.sample_fewshot(items, 0, 0) == []
    assert ce.sample_fewshot(items, 0, 3) != ce.sample_fewshot(items, 1, 3)
    assert ce.shuffle_task_items(items) == ce.shuffle_task_items(items) != items


def test_continuation_spans():
    """MC: after the common prefix (>= 1 token each); schema: the common suffix; LM: the 'with' row's tail."""
    assert ce.continuation_spans([[9, 5, 6, 7], [9, 5, 6, 8, 4]], "multiple_choice") == [(3, 4), (3, 5)]
    assert ce.continuation_spans([[9, 5, 6], [9, 5, 6, 7]], "multiple_choice") == [(2, 3), (3, 4)]
    assert ce.continuation_spans([[9, 2, 7, 8], [9, 3, 4, 7, 8]], "schema") == [(2, 4), (3, 5)]
    assert ce.continuation_spans([[9, 2, 3], [9, 2, 3, 4, 5]], "language_modeling") == [(3, 5)]
    assert ce.continuation_spans([[9, 2, 3], [9, 2, 6, 5]], "language_modeling") == [(2, 4)]  # retokenized tail


# -----------------------------------------------------------------------------
# Left-truncation and batching


def test_left_truncate_keeps_bos_and_continuation():
    """Rows longer than the context drop tokens after BOS; the continuation span moves with them."""
    row = [99, 1, 2, 3, 4, 5, 6]
    assert ce.left_truncate(row, 5, 7, 4) == ([99, 4, 5, 6], 2, 4)
    assert ce.left_truncate(row, 5, 7, 7) == (row, 5, 7)
    assert ce.left_truncate(row, 5, 7, None) == (row, 5, 7)
    assert ce.left_truncate(row, 5, 7, 3) == ([99, 5, 6], 1, 3)
    with pytest.raises(ValueError, match="does not fit"):
        ce.left_truncate(row, 5, 7, 2)


def test_long_prompts_are_left_truncated_not_failed(tokenizer):
    """With a 48-token context, 10-shot prompts are cut from the left and the gold-rigged model still scores 1."""
    max_len = 48
    for label in ("squad", "arc_easy", "winogrande"):
        task = load_task(label)
        model = RiggedModel(preferred_rows(tokenizer, task, "gold", max_len), tokenizer.get_vocab_size(), max_len)
        out = ce.evaluate_core(model, tokenizer, "cpu", bundle_dir="fixture", tasks=[label], batch_size=8)
        assert out["results"][label]["accuracy"] == 1.0, label
        assert max(len(r) for r in model.seen_rows) == max_len  # truncation happened
        assert all(r[0] == tokenizer.get_bos_token_id() for r in model.seen_rows)


def test_batch_size_does_not_change_results(tokenizer):
    """Packing several examples (and their choices) into one forward pass gives the per-example answers of 1."""
    model = BigramModel(tokenizer.get_vocab_size(), seed=1)
    results = [
        ce.evaluate_core(model, tokenizer, "cpu", bundle_dir="fixture", max_per_task=6, batch_size=bs)["results"]
        for bs in (1, 5, 64)
    ]
    assert results[0] == results[1] == results[2]
    assert len({r["accuracy"] for r in results[0].values()}) > 2  # a real spread, not a constant


def test_max_per_task_keeps_a_prefix_with_the_same_prompts(tokenizer):
    """max_per_task evaluates the first N shuffled items, each with the prompt it has in the full run."""
    model = BigramModel(tokenizer.get_vocab_size(), seed=2)
    task = load_task("arc_easy")
    items = ce.shuffle_task_items(task["items"])
    full = ce.evaluate_examples(model, tokenizer, {**task, "items": items}, list(range(len(items))), "cpu")
    out = ce.evaluate_core(model, tokenizer, "cpu", bundle_dir="fixture", tasks=["arc_easy"], max_per_task=5)
    assert out["results"]["arc_easy"]["n"] == 5
    assert out["results"]["arc_easy"]["accuracy"] == sum(full[:5]) / 5


# -----------------------------------------------------------------------------
# One process vs two (gloo on CPU)


def tiny_gpt(vocab_size):
    try:
        from nanochat.gpt import GPT, GPTConfig
    except ImportError:  # model not written yet: the bigram stand-in still checks the rank logic
        return BigramModel(vocab_size, seed=3, sequence_len=64)
    torch.manual_seed(0)
    config = GPTConfig(
        sequence_len=64, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=2, n_embd=64, window_pattern="L"
    )
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():  # output projections start at zero and lm_head near zero: give the logits a real spread
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


DIST_TASKS = "copa,hellaswag,winogrande,jeopardy,squad,agi_eval_lsat_ar"  # 3 types, 0/3/10-shot, truncated rows


def evaluate_tiny_gpt(tokenizer):
    model = tiny_gpt(tokenizer.get_vocab_size())
    # batch_size 1: each example alone, so 1 and 2 ranks run bitwise-identical forwards
    return ce.evaluate_core(
        model, tokenizer, "cpu", bundle_dir="fixture", tasks=DIST_TASKS, max_per_task=6, batch_size=1
    )


def _rank_main(rank, world_size, init_file, tokenizer_dir, out_path):
    from nanochat.tokenizer import Tokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        out = evaluate_tiny_gpt(Tokenizer.from_directory(tokenizer_dir))
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(out, f)
    finally:
        dist.destroy_process_group()


def test_one_and_two_processes_give_the_same_numbers(tokenizer, tmp_path):
    """Ranks stride over examples and all_reduce the counts: CORE and every task equal the 1-process run."""
    tokenizer_dir = str(tmp_path / "tok")
    tokenizer.save(tokenizer_dir)
    out_path = str(tmp_path / "out.json")
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), tokenizer_dir, out_path), nprocs=2, join=True)
    with open(out_path) as f:
        two = json.load(f)
    one = evaluate_tiny_gpt(tokenizer)  # this process, also one thread (module fixture)
    assert two["results"] == one["results"]
    assert two["core"] == one["core"]
    assert [r["n"] for r in one["results"].values()] == [6, 6, 6, 6, 6, 6]
    assert len({r["accuracy"] for r in one["results"].values()}) > 1  # the model is not constant


# -----------------------------------------------------------------------------
# Bad bundles: a clear error naming the file, never a silently lower score


def copy_fixture(tmp_path):
    bundle = str(tmp_path / "bundle")
    shutil.copytree(FIXTURE, bundle)
    return bundle


def rewrite_line(path, line_num, new_line):
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    lines[line_num - 1] = new_line
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def test_bad_bundles_raise_naming_the_file(tmp_path):
    """Missing core.yaml / task file / baseline row, bad JSON, missing fields, gold out of range: named errors."""
    piqa = os.path.join("eval_data", "commonsense_reasoning", "piqa.jsonl")

    def check(mutate, match, tasks=None):
        bundle = copy_fixture(tmp_path / str(len(os.listdir(tmp_path))))
        mutate(bundle)
        with pytest.raises(ce.BundleError, match=match):
            ce.evaluate_core(BigramModel(8), None, "cpu", bundle_dir=bundle, tasks=tasks)

    check(lambda b: os.remove(os.path.join(b, "core.yaml")), r"core\.yaml: missing")
    check(lambda b: os.remove(os.path.join(b, piqa)), r"piqa\.jsonl: missing task data file")
    check(lambda b: os.remove(os.path.join(b, "eval_meta_data.csv")), r"eval_meta_data\.csv: missing")

    def truncate_last_line(b):  # a download cut off in the middle of a line
        path = os.path.join(b, piqa)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) - 40])

    check(truncate_last_line, r"piqa\.jsonl:12: malformed JSON")
    check(
        lambda b: rewrite_line(os.path.join(b, piqa), 3, '{"query": "Goal: x", "choices": ["a", "b"]}\n'),
        r"piqa\.jsonl:3: missing field\(s\) gold",
    )
    check(
        lambda b: rewrite_line(os.path.join(b, piqa), 5, '{"query": "Goal: x", "choices": ["a", "b"], "gold": 2}\n'),
        r"piqa\.jsonl:5: gold 2 is out of range for 2 choices",
    )
    check(
        lambda b: rewrite_line(os.path.join(b, piqa), 4, '{"query": "Goal: x", "choices": "ab", "gold": 0}\n'),
        r"piqa\.jsonl:4: field 'choices' must be list",
    )
    squad = os.path.join("eval_data", "reading_comprehension", "squad.jsonl")
    check(
        lambda b: rewrite_line(os.path.join(b, squad), 7, '{"context": "Context: x"}\n'),
        r"squad\.jsonl:7: missing field\(s\) continuation",
    )
    winograd = os.path.join("eval_data", "language_understanding", "winograd_wsc.jsonl")
    check(
        lambda b: rewrite_line(
            os.path.join(b, winograd), 2, '{"context_options": ["a", "b"], "continuation": "c", "gold": -1}\n'
        ),
        r"winograd_wsc\.jsonl:2: gold -1 is out of range",
    )

    def drop_baseline(b):
        path = os.path.join(b, "eval_meta_data.csv")
        lines = [line for line in Path(path).read_text().splitlines(keepends=True) if not line.startswith("boolq,")]
        Path(path).write_text("".join(lines))

    check(drop_baseline, r"eval_meta_data\.csv: no 'Random baseline' row for task 'boolq'")

    def too_few_items(b):
        path = os.path.join(b, piqa)
        lines = Path(path).read_text().splitlines(keepends=True)[:10]
        Path(path).write_text("".join(lines))

    check(too_few_items, r"piqa\.jsonl: 10 items cannot give 10 few-shot examples")
    check(lambda b: Path(b, "core.yaml").write_text("icl_tasks: [\n"), r"core\.yaml: not valid YAML")
    check(lambda b: None, r"unknown task\(s\) \['nope'\]", tasks=["nope"])
    with pytest.raises(ce.BundleError, match="does not exist"):
        ce.resolve_bundle_dir(str(tmp_path / "nowhere"))


# -----------------------------------------------------------------------------
# Downloading the bundle


def make_bundle_zip(path, top_folder="eval_bundle"):
    """Zip the fixture the way the public bundle is laid out: everything under one top-level folder."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, _, files in os.walk(FIXTURE):
            for name in files:
                full = os.path.join(root, name)
                zf.write(full, os.path.join(top_folder, os.path.relpath(full, FIXTURE)))


class CountingServer:
    """http.server on a free localhost port serving one directory, counting GET requests."""

    def __init__(self, directory):
        counter = self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=directory, **kwargs)

            def do_GET(self):
                counter.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_download_over_http_happens_once(tmp_path, monkeypatch):
    """get_eval_bundle downloads and unzips into <base>/eval_bundle once; later and concurrent calls reuse it."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    serve_dir = tmp_path / "www"
    serve_dir.mkdir()
    make_bundle_zip(str(serve_dir / "eval_bundle.zip"))
    with CountingServer(str(serve_dir)) as server:
        url = f"{server.url}/eval_bundle.zip"
        results = []
        threads = [threading.Thread(target=lambda: results.append(ce.get_eval_bundle(url))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ce.get_eval_bundle(url) == results[0] == results[1] == str(tmp_path / "base" / "eval_bundle")
        assert server.requests == ["/eval_bundle.zip"]
    bundle = results[0]
    assert os.path.isfile(os.path.join(bundle, "core.yaml"))
    assert sorted(os.listdir(tmp_path / "base")) == ["eval_bundle", "eval_bundle.lock"]  # no temp files left
    assert ce.load_bundle(bundle, ["copa"])[0]["items"] == load_task("copa")["items"]


def test_download_from_file_url_and_bundle_selection(tmp_path, monkeypatch):
    """A file:// URL works too (zip with the bundle at its root); env and 'fixture' select bundles."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    zip_path = tmp_path / "bundle.zip"
    make_bundle_zip(str(zip_path), top_folder="")
    bundle = ce.resolve_bundle_dir(f"file://{zip_path}")
    assert bundle == str(tmp_path / "base" / "eval_bundle") and os.path.isfile(os.path.join(bundle, "core.yaml"))
    assert ce.resolve_bundle_dir("fixture") == FIXTURE
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE", bundle)
    assert ce.resolve_bundle_dir() == bundle
    monkeypatch.delenv("NANOCHAT_EVAL_BUNDLE")
    assert ce.resolve_bundle_dir(None, "cpu") == FIXTURE  # the CPU default


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_errors_clearly(tmp_path, monkeypatch):
    """Offline: the error names the URL and says how to place the bundle by hand or use the fixture."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    url = f"http://127.0.0.1:{free_port()}/eval_bundle.zip"
    with pytest.raises(RuntimeError) as e:
        ce.get_eval_bundle(url)
    message = str(e.value)
    assert url in message and "core.yaml" in message and "--bundle fixture" in message
    assert not os.path.exists(tmp_path / "base" / "eval_bundle")


def test_bad_or_truncated_zip_errors_naming_the_file(tmp_path, monkeypatch):
    """A zip that is not a zip, or is cut short, raises naming the file and URL; nothing is left behind."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(ce.BundleError, match=r"eval_bundle\.zip \(from file://.*bad\.zip\) is not a valid zip"):
        ce.get_eval_bundle(f"file://{bad}")
    good = tmp_path / "good.zip"
    make_bundle_zip(str(good))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ce.BundleError, match=r"cut\.zip"):
        ce.get_eval_bundle(f"file://{cut}")
    assert sorted(os.listdir(tmp_path / "base")) == ["eval_bundle.lock"]


def test_truncated_http_download_errors(tmp_path, monkeypatch):
    """A response shorter than its Content-Length is reported as truncated, naming the URL."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"PK" + b"x" * 98)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/eval_bundle.zip"
    try:
        with pytest.raises(RuntimeError, match=r"truncated|broke off") as e:
            ce.get_eval_bundle(url)
        assert url in str(e.value)
    finally:
        thread.join(timeout=5)
        server.server_close()


# -----------------------------------------------------------------------------
# Results files and the script


def test_results_written_as_csv_and_json(tmp_path, tokenizer):
    """The CSV has one row per task plus a final CORE row; the JSON holds the full result and extra metadata."""
    model = BigramModel(tokenizer.get_vocab_size())
    out = ce.evaluate_core(model, tokenizer, "cpu", bundle_dir="fixture", tasks="copa,squad", max_per_task=3)
    ce.write_core_results(out, str(tmp_path / "r.csv"), str(tmp_path / "r.json"), extra={"step": 7})
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "Task,Accuracy,Centered,Baseline,N"
    assert [line.split(",")[0] for line in lines[1:]] == ["copa", "squad", "CORE"]
    assert float(lines[-1].split(",")[2]) == pytest.approx(out["core"], abs=1e-6)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["step"] == 7 and saved["results"] == out["results"]


def test_base_eval_script_runs_on_a_checkpoint(tmp_path, tokenizer):
    """`python -m scripts.base_eval` evaluates the latest base checkpoint and writes CSV, JSON and a report."""
    checkpoint_manager = pytest.importorskip("nanochat.checkpoint_manager")
    base = tmp_path / "base"
    tokenizer.save(str(base / "tokenizer"))
    model = tiny_gpt(tokenizer.get_vocab_size())
    config = {
        "sequence_len": 64,
        "vocab_size": tokenizer.get_vocab_size(),
        "n_layer": 2,
        "n_head": 2,
        "n_kv_head": 2,
        "n_embd": 64,
        "window_pattern": "L",
    }
    ckpt_dir = str(base / "base_checkpoints" / "d2")
    for step in (3, 10):
        checkpoint_manager.save_checkpoint(ckpt_dir, step, model.state_dict(), None, {"model_config": config})
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}
    env.pop("NANOCHAT_EVAL_BUNDLE", None)
    cmd = [
        sys.executable,
        "-m",
        "scripts.base_eval",
        "--eval",
        "core,sample",
        "--device-type",
        "cpu",
        "--max-per-task",
        "2",
        "--tasks",
        "copa,jeopardy,winograd",
        "--device-batch-size",
        "4",
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fixture bundle" in proc.stdout  # the CPU default, said out loud
    saved = json.loads((base / "base_eval" / "base_model_d2_000010.json").read_text())
    assert (
        saved["step"] == 10 and saved["model_tag"] == "d2" and set(saved["results"]) == {"copa", "jeopardy", "winograd"}
    )
    assert (base / "base_eval" / "base_model_d2_000010.csv").exists()
    assert "The capital of France is" in proc.stdout
    assert "CORE" in (base / "report" / "base-model-evaluation.md").read_text()
