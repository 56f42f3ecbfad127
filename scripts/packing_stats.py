"""
Packing statistics of the pretraining dataloader: the fraction of tokens cropped away by BOS-aligned best-fit
packing (nanochat reports ~35% at T=2048 on its web data), and how many rows per second the loader packs.

    python -m scripts.packing_stats                       # default data dir (sample shards if none downloaded), get_tokenizer()
    python -m scripts.packing_stats --train-vocab 8192    # no tokenizer yet: train a throw-away one on the train split
    python -m scripts.packing_stats --data-dir DIR --seq-lens 2048,512 --rows 512

Crop fraction = tokens cropped / (tokens placed in rows + tokens cropped), counted over the documents taken out of
the buffer while packing the first --rows rows. Rates exclude the first batch (it fills the document buffer).
"""

import argparse
import time

from nanochat.dataloader import PretrainLoader
from nanochat.dataset import get_data_dir, parquets_iter_batched
from nanochat.tokenizer import Tokenizer, get_tokenizer

# -----------------------------------------------------------------------------
# Arguments

parser = argparse.ArgumentParser(description="Crop fraction and speed of best-fit packing")
parser.add_argument(
    "--data-dir", type=str, default=None, help="parquet shards (default: nanochat.dataset.get_data_dir())"
)
parser.add_argument("--split", type=str, default="train", choices=["train", "val"], help="which split to pack")
parser.add_argument("--seq-lens", type=str, default="2048,512", help="comma-separated sequence lengths T (tokens)")
parser.add_argument("--rows", type=int, default=512, help="rows to pack per sequence length")
parser.add_argument("--batch-size", type=int, default=16, help="rows per batch (B)")
parser.add_argument("--buffer-size", type=int, default=1000, help="documents kept in the packing buffer")
parser.add_argument("--threads", type=int, default=4, help="tokenizer threads")
parser.add_argument(
    "--train-vocab", type=int, default=0, help="if > 0: train a throw-away tokenizer of this vocab size"
)
parser.add_argument("--train-chars", type=int, default=50_000_000, help="max characters for --train-vocab training")
args = parser.parse_args()
seq_lens = [int(s) for s in args.seq_lens.split(",")]
assert args.rows >= 2 * args.batch_size, f"--rows {args.rows} must be at least two batches of {args.batch_size}"
data_dir = args.data_dir or get_data_dir()

# -----------------------------------------------------------------------------
# Tokenizer


def train_texts(max_chars):
    n_chars = 0
    for texts in parquets_iter_batched("train", data_dir=data_dir):
        for text in texts:
            yield text
            n_chars += len(text)
            if n_chars >= max_chars:
                return


if args.train_vocab > 0:
    t0 = time.time()
    tokenizer = Tokenizer.train_from_iterator(train_texts(args.train_chars), args.train_vocab)
    print(f"trained a throw-away tokenizer: vocab {tokenizer.get_vocab_size():,} in {time.time() - t0:.1f}s")
else:
    tokenizer = get_tokenizer()  # fails with a hint to run scripts.tok_train (or pass --train-vocab)
    print(f"tokenizer: vocab {tokenizer.get_vocab_size():,}")

# -----------------------------------------------------------------------------
# Pack

print(f"data: {data_dir} ({args.split} split), {args.rows} rows per T, B={args.batch_size}, buffer {args.buffer_size}")
print(
    f"{'T':>6} {'rows':>6} {'tokens used':>12} {'cropped':>12} {'crop %':>7} {'rows/s':>8} {'tok/s':>10} {'buffer':>7}"
)
for T in seq_lens:
    loader = PretrainLoader(
        tokenizer,
        args.batch_size,
        T,
        args.split,
        rank=0,
        world_size=1,
        data_dir=data_dir,
        buffer_size=args.buffer_size,
        tokenizer_threads=args.threads,
    )
    next(loader)  # fills the buffer; kept out of the rates
    t0, rows0 = time.time(), loader.rows
    while loader.rows < args.rows:
        next(loader)
    dt = time.time() - t0
    rows_per_s = (loader.rows - rows0) / dt
    print(
        f"{T:>6} {loader.rows:>6} {loader.tokens_used:>12,} {loader.tokens_cropped:>12,} "
        f"{100 * loader.crop_fraction:>6.1f}% {rows_per_s:>8.1f} {rows_per_s * (T + 1):>10,.0f} "
        f"{loader.num_buffered:>7}"
    )
