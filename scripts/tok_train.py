"""
Train the byte-level BPE tokenizer on the train split of the pretraining shards and save it to <base>/tokenizer/
(tokenizer.pkl + token_bytes.pt). The validation shard (the last parquet file) is never read. CPU only; the same
command on a laptop, one GPU node or an 8-GPU node.

    python -m scripts.tok_train                                          # vocab 32,768 on up to 2B chars (speedrun)
    python -m scripts.tok_train --vocab-size 8192 --max-chars 20000000   # small CPU run on the embedded sample
    python -m scripts.tok_train --data-dir /path/to/shards               # any folder of parquet shards

The shards come from nanochat.dataset: $NANOCHAT_DATA_DIR, else <base>/base_data_climbmix once downloaded
(python -m nanochat.dataset -n 8), else the embedded sample in nanochat/data/sample_shards.
"""

import argparse
import os
import time

from nanochat.common import get_base_dir
from nanochat.dataset import parquets_iter_batched
from nanochat.report import get_report
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Train the BPE tokenizer on the train shards")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocab size in tokens, the 9 special tokens included")
parser.add_argument(
    "--max-chars", type=lambda s: int(float(s)), default=2_000_000_000, help="stop after this many characters (2e9 ok)"
)
parser.add_argument("--doc-cap", type=int, default=10_000, help="crop each document to its first N characters")
parser.add_argument("--data-dir", type=str, default=None, help="folder of parquet shards (default: nanochat.dataset's)")
args = parser.parse_args()
print(f"vocab_size: {args.vocab_size:,} | max_chars: {args.max_chars:,} | doc_cap: {args.doc_cap:,} chars")

# -----------------------------------------------------------------------------
# Text: train row groups, each document cropped to doc_cap, until max_chars

num_chars = 0  # characters handed to the trainer (after cropping)
num_docs = 0
t0 = time.time()


def text_iterator():
    global num_chars, num_docs
    last_print = time.time()
    for batch in parquets_iter_batched("train", data_dir=args.data_dir):
        for doc in batch:
            doc = doc[: args.doc_cap]
            num_chars += len(doc)
            num_docs += 1
            yield doc
            if num_chars >= args.max_chars:
                return
        if time.time() - last_print > 10:  # progress; the ETA assumes the data lasts until max_chars
            last_print = time.time()
            rate = num_chars / (last_print - t0)
            eta = (args.max_chars - num_chars) / rate
            print(f"  read {num_chars:,} chars ({num_docs:,} docs) | {rate:,.0f} chars/s | ETA <= {eta:.0f}s")


# -----------------------------------------------------------------------------
# Train (rustbpe pulls from the iterator in batches, so this time includes reading the shards)

tokenizer = Tokenizer.train_from_iterator(text_iterator(), args.vocab_size)
train_time = time.time() - t0
assert num_chars > 0, "no training text: the train split is empty (is there more than one parquet shard?)"
vocab_size = tokenizer.get_vocab_size()
print(f"trained on {num_chars:,} chars ({num_docs:,} docs) in {train_time:.2f}s: {num_chars / train_time:,.0f} chars/s")
print(f"vocab size: {vocab_size:,} ({vocab_size - len(SPECIAL_TOKENS):,} learned + {len(SPECIAL_TOKENS)} special)")
if vocab_size < args.vocab_size:
    print(f"NOTE: asked for {args.vocab_size:,} tokens but the corpus ran out of pairs to merge at {vocab_size:,}")

# -----------------------------------------------------------------------------
# Save and check

tokenizer_dir = os.path.join(get_base_dir(), "tokenizer")
tokenizer.save(tokenizer_dir)
print(f"saved tokenizer.pkl and token_bytes.pt to {tokenizer_dir}")

test_text = """Hello world! This is a test.
Numbers: 123, 4567, 89; 3.14159 and 1,000,000.
Contractions: I'm, you're, it's, we'll, they've.
Special chars: @#$%^&*()_+-=[]{}|;':",./<>?  and a literal <|bos|> in text.
Unicode: 안녕하세요 世界 café naïve 🚀🎉
    indented code:\tdef f(x): return x ** 2
"""
ids = tokenizer.encode(test_text)
assert tokenizer.decode(ids) == test_text, "round trip failed: decode(encode(text)) != text"
assert not set(ids) & {tokenizer.encode_special(s) for s in SPECIAL_TOKENS}, "plain text encoded to a special token"
print(f"round trip ok: {len(test_text)} chars -> {len(ids)} tokens -> same text")

token_bytes = tokenizer.token_bytes()
learned = token_bytes[token_bytes > 0].float()
print(
    f"token bytes: min {int(learned.min())}, max {int(learned.max())}, mean {learned.mean():.2f} "
    f"over {learned.numel():,} learned tokens; {int((token_bytes == 0).sum())} special tokens have 0"
)

# -----------------------------------------------------------------------------
# Report

get_report().log(
    section="Tokenizer training",
    data=[
        vars(args),
        {
            "train_chars": num_chars,
            "train_docs": num_docs,
            "train_time_s": train_time,
            "train_chars_per_s": num_chars / train_time,
            "trained_vocab_size": vocab_size,
            "num_special_tokens": len(SPECIAL_TOKENS),
            "token_bytes_min": int(learned.min()),
            "token_bytes_max": int(learned.max()),
            "token_bytes_mean": float(learned.mean()),
        },
    ],
)
