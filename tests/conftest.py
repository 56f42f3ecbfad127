"""Shared fixtures: a tiny tokenizer trained once per session on the embedded corpus (offline, ~1 s)."""

import os

import pytest

SAMPLE_TEXT = (
    "In the beginning God created the heaven and the earth. It is a truth universally acknowledged, that a single "
    "man in possession of a good fortune, must be in want of a wife. To be, or not to be, that is the question. "
    "def add(a, b):\n    return a + b\n 1234567890 + 42 = 1276? Yes! \t Tabs and  spaces.\n\n"
    "How many r are in strawberry? Multiple Choice question: Respond only with the letter of the correct answer. "
)


def corpus_texts(max_chars=300_000):
    """Real text from the embedded sample shards when present, else the built-in sample."""
    from nanochat.common import PACKAGE_DATA_DIR

    shard_dir = os.path.join(PACKAGE_DATA_DIR, "sample_shards")
    texts = [SAMPLE_TEXT] * 20
    if os.path.isdir(shard_dir):
        import pyarrow.parquet as pq

        files = sorted(f for f in os.listdir(shard_dir) if f.endswith(".parquet"))
        if files:
            pf = pq.ParquetFile(os.path.join(shard_dir, files[0]))
            total = 0
            for text in pf.read_row_group(0).column("text").to_pylist():
                texts.append(text[:20_000])
                total += len(texts[-1])
                if total > max_chars:
                    break
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from nanochat.tokenizer import Tokenizer

    return Tokenizer.train_from_iterator(iter(corpus_texts()), vocab_size=512)
