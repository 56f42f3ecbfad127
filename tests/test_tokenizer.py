"""Tokenizer: BPE training, encode/decode, special tokens, save/load, token byte lengths, chat rendering, and the
tok_train / tok_eval scripts end to end on a tiny parquet corpus."""

import json
import os
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.common import REPO_DIR
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, get_token_bytes, get_tokenizer

CORPUS = """The quick brown fox jumps over the lazy dog. It's a sunny day; we'll walk to the river and they've said
they're coming too. Numbers: 12345, 3.14159, 1,000,000 and 2024-01-31. Prices rose 7% to $1,299.99.
def add(a, b):
    return a + b  # tabs\tand spaces   and    runs
for i in range(10):
    print(i ** 2)
Unicode: café, naïve, résumé, Straße, 東京, 北京, 안녕하세요, こんにちは, Привет, emoji 🚀🎉👍🏽.
"""

WORDS = ["time", "person", "year", "way", "day", "thing", "man", "world", "life", "hand", "part", "child", "eye"]


def corpus_docs(seed, num_docs, words_per_doc=60):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(words_per_doc)) + f". Item {rng.randint(0, 99999)}."
        for _ in range(num_docs)
    ]


@pytest.fixture(scope="module")
def tok():
    docs = [CORPUS] * 8 + corpus_docs(0, 40)
    return Tokenizer.train_from_iterator(iter(docs), vocab_size=400)


TRICKY_TEXTS = [
    "",
    "hello world",
    "Unicode: café naïve Straße 東京 안녕하세요 こんにちは Привет 🚀🎉👍🏽 e\u0301 \u200b zero-width",
    "def f(x):\n\treturn x ** 2  # comment\n\n\n",
    "Numbers 0 7 42 123 4567 89012 3.14159 -2.5e-10 1,000,000 0x1F 2024-01-31",
    "   leading spaces, trailing spaces   \n\n\t\t\r\n  \t mixed   \n",
    "\x00\x01 control \x7f bytes and a lone surrogate-free 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 line",
]


# -----------------------------------------------------------------------------
# Encode / decode and special tokens


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_round_trip(tok, text):
    """decode(encode(text)) == text for unicode, code, numbers, whitespace runs, tabs and newlines."""
    assert tok.decode(tok.encode(text)) == text


def test_vocab_layout_and_special_ids(tok):
    """The 9 specials sit right after the learned tokens, in SPECIAL_TOKENS order; BOS is the first of them."""
    vocab_size = tok.get_vocab_size()
    assert 256 + 9 < vocab_size <= 400  # rustbpe may stop early on a tiny corpus: only an upper bound is exact
    n_learned = vocab_size - len(SPECIAL_TOKENS)
    assert [tok.encode_special(s) for s in SPECIAL_TOKENS] == list(range(n_learned, vocab_size))
    assert tok.get_bos_token_id() == tok.encode_special("<|bos|>") == n_learned
    assert tok.get_special_tokens() == set(SPECIAL_TOKENS)


def test_text_never_encodes_to_special_tokens(tok):
    """Literal special-token strings in text encode as plain bytes, singly and in batch."""
    special_ids = {tok.encode_special(s) for s in SPECIAL_TOKENS}
    text = "before " + " mid ".join(SPECIAL_TOKENS) + " after<|bos|><|user_end|>"
    ids = tok.encode(text)
    assert not special_ids & set(ids)
    assert tok.decode(ids) == text
    for batch_ids in tok.encode([text, "<|assistant_start|>"], num_threads=2):
        assert not special_ids & set(batch_ids)


def test_prepend_append(tok):
    """prepend/append accept a special token as a string or an id, for str and list inputs."""
    bos, end = tok.get_bos_token_id(), tok.encode_special("<|assistant_end|>")
    body = tok.encode("hello world")
    assert tok.encode("hello world", prepend="<|bos|>", append=end) == [bos, *body, end]
    assert tok.encode(["hello world", ""], prepend=bos) == [[bos, *body], [bos]]


def test_batch_equals_single(tok):
    """Threaded batch encoding gives exactly the per-text encodings, in order."""
    texts = TRICKY_TEXTS + corpus_docs(1, 20)
    assert tok.encode(texts, num_threads=4) == [tok.encode(t) for t in texts]


def test_encode_rejects_other_types(tok):
    """encode takes str or list[str] only."""
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_vocab_size_too_small():
    """A vocab that leaves fewer than 256 byte tokens fails with a readable message (not a Rust panic)."""
    with pytest.raises(AssertionError, match="256"):
        Tokenizer.train_from_iterator(iter(["abc"]), vocab_size=260)


# -----------------------------------------------------------------------------
# Token byte lengths, save / load


def test_token_bytes(tok):
    """token_bytes is int32, 1 for every raw byte token, 0 for specials, and sums to the UTF-8 length of any text."""
    token_bytes = tok.token_bytes()
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (tok.get_vocab_size(),)
    assert (token_bytes[:256] == 1).all()  # bytes 0x80-0xff alone are not valid UTF-8: lengths come from raw bytes
    assert all(token_bytes[tok.encode_special(s)] == 0 for s in SPECIAL_TOKENS)
    for text in TRICKY_TEXTS:
        assert int(token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_save_load_round_trip(tok, tmp_path):
    """A saved and reloaded tokenizer encodes identically and writes the token_bytes table next to it."""
    tok.save(str(tmp_path))
    loaded = Tokenizer.from_directory(str(tmp_path))
    assert loaded.get_vocab_size() == tok.get_vocab_size()
    for text in TRICKY_TEXTS + ["<|bos|> literal"]:
        assert loaded.encode(text) == tok.encode(text)
    assert [loaded.encode_special(s) for s in SPECIAL_TOKENS] == [tok.encode_special(s) for s in SPECIAL_TOKENS]
    assert torch.equal(torch.load(tmp_path / "token_bytes.pt"), tok.token_bytes())


def test_get_tokenizer_from_base_dir(tok, tmp_path, monkeypatch):
    """get_tokenizer/get_token_bytes read <base>/tokenizer and say how to make it when it is missing."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="scripts.tok_train"):
        get_tokenizer()
    with pytest.raises(FileNotFoundError, match="scripts.tok_train"):
        get_token_bytes()
    tok.save(str(tmp_path / "tokenizer"))
    assert get_tokenizer().encode(CORPUS) == tok.encode(CORPUS)
    assert torch.equal(get_token_bytes("cpu"), tok.token_bytes())


# -----------------------------------------------------------------------------
# Chat rendering

TOOL_CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 12*34?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me compute."},
                {"type": "python", "text": "12*34"},
                {"type": "python_output", "text": "408"},
                {"type": "text", "text": "It is 408."},
            ],
        },
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]
}


def expected_rendering(tok, pieces):
    """(ids, mask) from hand-written (piece, mask) pairs: a piece is a special token name or text to encode."""
    ids, mask = [], []
    for piece, m in pieces:
        piece_ids = [tok.encode_special(piece)] if piece in SPECIAL_TOKENS else tok.encode(piece)
        ids += piece_ids
        mask += [m] * len(piece_ids)
    return ids, mask


def test_render_conversation_with_tool_call(tok):
    """Mask is 1 exactly on assistant text, python calls and <|assistant_end|>; system merges into the first user."""
    expected = expected_rendering(
        tok,
        [
            ("<|bos|>", 0),
            ("<|user_start|>", 0),
            ("Be brief.\n\nWhat is 12*34?", 0),
            ("<|user_end|>", 0),
            ("<|assistant_start|>", 0),
            ("Let me compute.", 1),
            ("<|python_start|>", 1),
            ("12*34", 1),
            ("<|python_end|>", 1),
            ("<|output_start|>", 0),
            ("408", 0),
            ("<|output_end|>", 0),
            ("It is 408.", 1),
            ("<|assistant_end|>", 1),
            ("<|user_start|>", 0),
            ("Thanks!", 0),
            ("<|user_end|>", 0),
            ("<|assistant_start|>", 0),
            ("You're welcome.", 1),
            ("<|assistant_end|>", 1),
        ],
    )
    assert tok.render_conversation(TOOL_CONVERSATION) == expected


def test_render_truncates(tok):
    """max_tokens cuts ids and mask to the same prefix of the full rendering."""
    ids, mask = tok.render_conversation(TOOL_CONVERSATION)
    assert len(ids) > 10
    assert tok.render_conversation(TOOL_CONVERSATION, max_tokens=10) == (ids[:10], mask[:10])


def test_render_for_completion(tok):
    """The prompt is the conversation without its last assistant turn, then <|assistant_start|>; input untouched."""
    before = json.dumps(TOOL_CONVERSATION)
    prompt = tok.render_for_completion(TOOL_CONVERSATION)
    assert json.dumps(TOOL_CONVERSATION) == before
    head = {"messages": TOOL_CONVERSATION["messages"][:-1]}
    assert prompt == tok.render_conversation(head)[0] + [tok.encode_special("<|assistant_start|>")]
    with pytest.raises(ValueError, match="end with an assistant"):
        tok.render_for_completion(head)


def user(text):
    return {"role": "user", "content": text}


def assistant(content):
    return {"role": "assistant", "content": content}


BAD_CONVERSATIONS = {
    "no messages key": ({"turns": []}, "messages"),
    "empty": ({"messages": []}, "no messages"),
    "starts with assistant": ({"messages": [assistant("hi"), user("hi")]}, "alternate"),
    "two users in a row": ({"messages": [user("a"), user("b")]}, "alternate"),
    "two assistants in a row": ({"messages": [user("a"), assistant("b"), assistant("c")]}, "alternate"),
    "unknown role": ({"messages": [user("a"), {"role": "tool", "content": "x"}]}, "unknown role"),
    "unknown part type": ({"messages": [user("a"), assistant([{"type": "image", "text": "x"}])]}, "unknown part"),
    "part text not str": ({"messages": [user("a"), assistant([{"type": "text", "text": 3}])]}, "must be a str"),
    "user content not str": ({"messages": [user(["a"])]}, "must be a str"),
    "assistant content int": ({"messages": [user("a"), assistant(5)]}, "str or a list"),
    "system not first": ({"messages": [user("a"), {"role": "system", "content": "s"}]}, "only the first"),
    "system alone": ({"messages": [{"role": "system", "content": "s"}]}, "followed by a user"),
    "system then assistant": ({"messages": [{"role": "system", "content": "s"}, assistant("x")]}, "followed by a user"),
}


@pytest.mark.parametrize("name", list(BAD_CONVERSATIONS))
def test_bad_conversations_raise(tok, name):
    """Malformed conversations raise ValueError naming the problem."""
    conversation, message = BAD_CONVERSATIONS[name]
    with pytest.raises(ValueError, match=message):
        tok.render_conversation(conversation)


# -----------------------------------------------------------------------------
# Scripts end to end: python -m scripts.tok_train / scripts.tok_eval on a tiny parquet corpus


def write_shards(data_dir, num_files=3, docs_per_file=80, row_group_size=40):
    """num_files parquet files with a 'text' column; the last one is the validation split."""
    os.makedirs(data_dir, exist_ok=True)
    docs_by_file = []
    for i in range(num_files):
        docs = corpus_docs(100 + i, docs_per_file, words_per_doc=random.Random(i).randint(200, 400))
        docs[0] = CORPUS * 3  # one long, varied document per file
        table = pa.table({"text": docs})
        pq.write_table(table, os.path.join(data_dir, f"shard_{i:05d}.parquet"), row_group_size=row_group_size)
        docs_by_file.append(docs)
    return docs_by_file


def run_script(module, args, base_dir, tmp_path):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), TIKTOKEN_CACHE_DIR=str(tmp_path / "empty_tiktoken_cache"))
    env.pop("NANOCHAT_DATA_DIR", None)
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        check=False,
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"{module} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_tok_train_and_tok_eval_scripts(tmp_path):
    """tok_train reads only train files, honours --max-chars/--doc-cap, saves and reports; tok_eval runs offline."""
    data_dir = tmp_path / "shards"
    docs_by_file = write_shards(str(data_dir))
    base_dir = tmp_path / "base"
    doc_cap = 1500

    # 1) the brief's small run: stops at the first document that reaches --max-chars
    stdout = run_script(
        "scripts.tok_train",
        ["--vocab-size", "512", "--max-chars", "20000", "--doc-cap", str(doc_cap), "--data-dir", str(data_dir)],
        base_dir,
        tmp_path,
    )
    assert "chars/s" in stdout and "round trip ok" in stdout, stdout
    report = json.loads((base_dir / "report" / "tokenizer-training.json").read_text())["data"]
    assert 20000 <= report["train_chars"] < 20000 + doc_cap
    assert os.path.exists(base_dir / "tokenizer" / "tokenizer.pkl")
    assert os.path.exists(base_dir / "tokenizer" / "token_bytes.pt")

    # 2) no char limit: exactly the cropped train documents are read, the validation file never
    run_script(
        "scripts.tok_train",
        ["--vocab-size", "300", "--doc-cap", str(doc_cap), "--data-dir", str(data_dir)],
        base_dir,
        tmp_path,
    )
    report = json.loads((base_dir / "report" / "tokenizer-training.json").read_text())["data"]
    assert report["train_chars"] == sum(min(len(d), doc_cap) for docs in docs_by_file[:-1] for d in docs)
    assert report["train_docs"] == sum(len(docs) for docs in docs_by_file[:-1])
    assert Tokenizer.from_directory(str(base_dir / "tokenizer")).get_vocab_size() <= 300

    # 3) tok_eval: our tokenizer's table; GPT-2/GPT-4 skipped plainly with an empty tiktoken cache, no network
    stdout = run_script("scripts.tok_eval", ["--data-dir", str(data_dir)], base_dir, tmp_path)
    assert "GPT-2 tokenizer not available offline (tiktoken cache missing): skipped" in stdout
    assert "GPT-4 tokenizer not available offline (tiktoken cache missing): skipped" in stdout
    for name in ["news", "korean", "code", "math", "numbers", "train[0]", "val[0]"]:
        assert f"| {name}" in stdout
    assert (base_dir / "report" / "tokenizer-evaluation.md").exists()
