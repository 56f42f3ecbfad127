"""
Compression of our tokenizer in bytes per token (higher = fewer tokens for the same text) on several kinds of text,
side by side with GPT-2 and GPT-4 (cl100k_base) when tiktoken has them cached locally. tiktoken would download
them otherwise; this script never goes to the network and says plainly when a comparison is skipped.

    python -m scripts.tok_eval                         # after python -m scripts.tok_train
    python -m scripts.tok_eval --data-dir /path/to/shards

tiktoken's cache is $TIKTOKEN_CACHE_DIR (else $DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache); fill it on a
machine with network with `python -c "import tiktoken; tiktoken.get_encoding('gpt2'); tiktoken.get_encoding('cl100k_base')"`.
"""

import argparse
import contextlib

import tiktoken.load

from nanochat.dataset import parquets_iter_batched
from nanochat.report import get_report
from nanochat.tokenizer import Tokenizer, get_tokenizer

parser = argparse.ArgumentParser(description="Compression (bytes/token) of the trained tokenizer vs GPT-2 and GPT-4")
parser.add_argument("--data-dir", type=str, default=None, help="folder of parquet shards (default: nanochat.dataset's)")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# Texts (written for this file), then the first row group of the train and of the validation split

news_text = """City councillors voted 7 to 2 on Tuesday night to approve a new bus route linking the northern suburbs
to the hospital district, ending a debate that had dragged on for more than a year. Supporters said the line would
cut commuting times for nurses and shift workers by up to forty minutes a day, while opponents questioned the cost,
estimated at $14.2 million over five years. "We heard from hundreds of residents who simply could not get to work
on time," the council's transport chair told reporters after the meeting. Service is expected to begin next spring,
pending the delivery of twelve electric buses that were ordered in March."""

korean_text = """오늘 아침 서울에는 가을비가 조용히 내렸다. 출근길 사람들은 우산을 들고 지하철역으로 서둘러 걸어갔고,
작은 빵집 앞에는 따뜻한 커피를 사려는 손님들이 줄을 섰다. 기상청은 오후부터 날씨가 맑아지겠지만 기온이 크게
떨어질 것이라고 예보했다. 시민들은 주말 나들이 계획을 다시 세우며 두꺼운 외투를 꺼내기 시작했다."""

german_text = """Die kleine Bäckerei am Marktplatz öffnet jeden Morgen um sechs Uhr. Schon vor Sonnenaufgang duftet
die ganze Straße nach frischem Brot, und die ersten Kunden warten geduldig vor der Tür. Die Inhaberin erzählt, dass
sie das Rezept für ihr Roggenbrot von ihrer Großmutter übernommen hat und es seit über dreißig Jahren kaum verändert."""

code_text = '''def merge_intervals(intervals):
    """Merge overlapping [start, end] intervals; returns a new sorted list."""
    if not intervals:
        return []
    intervals = sorted(intervals, key=lambda iv: iv[0])
    merged = [list(intervals[0])]
    for start, end in intervals[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


if __name__ == "__main__":
    print(merge_intervals([(1, 3), (2, 6), (8, 10), (15, 18)]))  # [[1, 6], [8, 10], [15, 18]]
'''

math_text = r"""\begin{theorem}
For every integer $n \geq 1$, the sum of the first $n$ odd numbers is $n^2$, that is
\[ \sum_{k=1}^{n} (2k - 1) = n^2. \]
\end{theorem}
\begin{proof}
We argue by induction on $n$. For $n = 1$ both sides equal $1$. Suppose the identity holds for some $n \geq 1$.
Then
\begin{align*}
\sum_{k=1}^{n+1} (2k - 1) &= \sum_{k=1}^{n} (2k - 1) + (2(n+1) - 1) \\
&= n^2 + 2n + 1 = (n + 1)^2,
\end{align*}
which is the claim for $n + 1$. \qedhere
\end{proof}"""

numbers_text = """Quarter  Revenue   Cost      Margin  Units
2023-Q1  1,204,331  873,210  27.49%  18,204
2023-Q2  1,318,902  901,774  31.63%  19,876
2023-Q3  1,290,045  915,003  29.07%  19,113
2023-Q4  1,477,610  988,420  33.11%  22,540
Totals: 5,290,888 revenue; 3,678,407 cost; order ids 40017, 40018, 40931, 41205; pi = 3.14159265358979;
phone +1 (415) 555-0134; timestamps 1700000000, 1700003600, 1700007200; version 12.4.117."""

first_train = "\n".join(next(parquets_iter_batched("train", data_dir=args.data_dir)))
first_val = "\n".join(next(parquets_iter_batched("val", data_dir=args.data_dir)))

texts = [
    ("news", news_text),
    ("korean", korean_text),
    ("german", german_text),
    ("code", code_text),
    ("math", math_text),
    ("numbers", numbers_text),
    ("train[0]", first_train),
    ("val[0]", first_val),
]

# -----------------------------------------------------------------------------
# Tokenizers


class NotCachedError(Exception):
    pass


@contextlib.contextmanager
def tiktoken_offline():
    """Make tiktoken read only its local cache: on a cache miss it calls tiktoken.load.read_file to download,
    which we replace with an immediate error (no network attempt, no hang on a machine without network)."""

    def refuse_download(blobpath):
        raise NotCachedError(blobpath)

    original = tiktoken.load.read_file
    tiktoken.load.read_file = refuse_download
    try:
        yield
    finally:
        tiktoken.load.read_file = original


tokenizers = {"ours": get_tokenizer()}
for label, tiktoken_name in [("gpt2", "gpt2"), ("gpt4", "cl100k_base")]:
    try:
        with tiktoken_offline():
            tokenizers[label] = Tokenizer.from_pretrained(tiktoken_name)
    except NotCachedError:
        print(f"{label.replace('gpt', 'GPT-')} tokenizer not available offline (tiktoken cache missing): skipped")
for label, tok in tokenizers.items():
    print(f"{label} vocab size: {tok.get_vocab_size():,}")

# -----------------------------------------------------------------------------
# Table: bytes per token for each tokenizer; vs-baseline columns = % fewer tokens than the baseline uses

results = {}  # (text name, tokenizer label) -> number of tokens
for name, text in texts:
    for label, tok in tokenizers.items():
        results[name, label] = len(tok.encode(text))

baselines = [label for label in tokenizers if label != "ours"]
header = f"| {'text':<9} | {'bytes':>9} | " + " | ".join(f"{label + ' tok':>10} | {'B/tok':>6}" for label in tokenizers)
header += "".join(f" | {'vs ' + label:>8}" for label in baselines) + " |"
lines = [header, "|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|"]
for name, text in texts:
    num_bytes = len(text.encode("utf-8"))
    row = f"| {name:<9} | {num_bytes:>9,} | "
    row += " | ".join(f"{results[name, label]:>10,} | {num_bytes / results[name, label]:>6.2f}" for label in tokenizers)
    for label in baselines:
        fewer = 100 * (results[name, label] - results[name, "ours"]) / results[name, label]
        row += f" | {fewer:>+7.1f}%"
    lines.append(row + " |")
table = "\n".join(lines)
legend = "bytes per token (B/tok, higher is better)"
if baselines:
    legend += "; 'vs X' = % fewer tokens than X needs (positive: ours is better)"
print(legend)
print(table)

get_report().log(
    section="Tokenizer evaluation",
    data=[
        {f"{label}_vocab_size": tok.get_vocab_size() for label, tok in tokenizers.items()},
        {f"bytes_per_token_{name}": len(text.encode("utf-8")) / results[name, "ours"] for name, text in texts},
        {"baselines_compared": ", ".join(baselines) or "none (tiktoken cache missing)"},
        table,
    ],
)
