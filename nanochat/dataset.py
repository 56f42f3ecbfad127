"""
The pretraining corpus: where its parquet shards live, how to read them, and how to download them.

A shard is a parquet file `shard_{index:05d}.parquet` with one `text` column, written in row groups of
documents (1,024 per group in the real corpus, 64 in the embedded sample). The last file in sorted order is
the validation split, all others are training. Ranks read disjoint row groups: start=rank, step=world_size.

Download training shards 0..N-1 plus the validation shard (~100 MB each) into <base dir>/base_data_climbmix/:
    python -m nanochat.dataset -n 8                        # enough to train the tokenizer (~2B characters)
    python -m nanochat.dataset -n 170 -w 8                 # a GPT-2-grade d24 run
    python -m nanochat.dataset -n 8 --dataset fineweb-edu  # the older FineWeb-EDU corpus, in its own folder
    python -m nanochat.dataset -n 8 --base-url file:///mnt/mirror/climbmix/   # a mirror or local folder
With fewer than two downloaded shards, everything reads the embedded sample in nanochat/data/sample_shards/.
"""

import argparse
import http.client
import os
import pathlib
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed

import pyarrow.parquet as pq

from nanochat.common import PACKAGE_DATA_DIR, get_base_dir, print0

# name -> (base URL, index of the last shard, which is the validation shard, folder under the base dir)
DATASETS = {
    "climbmix": (
        "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/",
        6542,  # 6,543 shards of ~100 MB, ~400B GPT-2 tokens
        "base_data_climbmix",
    ),
    "fineweb-edu": (
        "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/",
        1822,  # 1,823 shards, the FineWeb-EDU 100B-token sample
        "base_data_fineweb_edu",
    ),
}
SAMPLE_DATA_DIR = os.path.join(PACKAGE_DATA_DIR, "sample_shards")

MAX_ATTEMPTS = 5  # per shard; waits between attempts are BACKOFF_S * 2^k seconds: 2, 4, 8, 16
BACKOFF_S = 2.0
TIMEOUT_S = 60.0  # socket timeout for connecting and for each read
CHUNK_BYTES = 1 << 20


def shard_name(index):
    return f"shard_{index:05d}.parquet"


# -----------------------------------------------------------------------------
# Reading

_announced_dirs = set()


def get_data_dir(dataset="climbmix"):
    """$NANOCHAT_DATA_DIR, else the downloaded shards if there are at least 2, else the embedded sample."""
    if os.environ.get("NANOCHAT_DATA_DIR"):
        data_dir, why = os.environ["NANOCHAT_DATA_DIR"], "$NANOCHAT_DATA_DIR"
    else:
        downloaded = os.path.join(get_base_dir(), DATASETS[dataset][2])
        num_downloaded = len(list_parquet_files(downloaded))
        if num_downloaded >= 2:
            data_dir, why = downloaded, f"{num_downloaded} downloaded shards"
        else:
            data_dir = SAMPLE_DATA_DIR
            why = (
                f"the embedded sample, {num_downloaded} shards in {downloaded}; "
                "download real ones with `python -m nanochat.dataset -n 8`"
            )
    if data_dir not in _announced_dirs:
        _announced_dirs.add(data_dir)
        print0(f"Pretraining data: {data_dir} ({why})")
    return data_dir


def list_parquet_files(data_dir=None):
    """Sorted full paths of the shards in data_dir; the last one is validation. Temporary files are hidden."""
    data_dir = data_dir or get_data_dir()
    if not os.path.isdir(data_dir):
        return []
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(".parquet") and not n.startswith("."))
    return [os.path.join(data_dir, n) for n in names]


def parquets_iter_batched(split, start=0, step=1, data_dir=None):
    """
    Yield the documents of a split one row group at a time, as a list[str].
    split "train" reads every file but the last, "val" the last one; in each file, row groups
    start, start + step, ... are read, so ranks (start=rank, step=world_size) see disjoint documents.
    """
    assert split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}"
    assert 0 <= start < step, f"need 0 <= start < step, got start={start}, step={step}"
    data_dir = data_dir or get_data_dir()
    paths = list_parquet_files(data_dir)
    assert len(paths) >= 2, f"need at least 2 parquet files (train + val) in {data_dir}, found {len(paths)}"
    paths = paths[:-1] if split == "train" else paths[-1:]
    for path in paths:
        pf = pq.ParquetFile(path)
        for rg_idx in range(start, pf.num_row_groups, step):
            yield pf.read_row_group(rg_idx, columns=["text"]).column("text").to_pylist()


# -----------------------------------------------------------------------------
# Downloading


class DownloadError(RuntimeError):
    """A shard could not be downloaded after all attempts; the message names the URL."""


class IncompleteBody(OSError):
    """The body was shorter or longer than its Content-Length (an OSError, so it is retried)."""


class Progress:
    """Thread-safe counters for parallel downloads, shown as one status line with MB/s and ETA."""

    def __init__(self, num_shards, stream=None, interval_s=0.5):
        self.num_shards, self.stream, self.interval_s = num_shards, stream or sys.stdout, interval_s
        self.is_tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        self.num_done = 0
        self.bytes_received = 0  # every byte read, failed attempts included: the throughput actually seen
        self.active = {}  # index -> [bytes so far, Content-Length or None]

    def start(self, index, total):
        with self.lock:
            self.active[index] = [0, total]

    def add(self, index, num_bytes):
        with self.lock:
            self.active[index][0] += num_bytes
            self.bytes_received += num_bytes
            if self.is_tty and time.perf_counter() - self.last_print > self.interval_s:
                self._show()

    def end(self, index, ok):
        with self.lock:
            self.active.pop(index, None)
            self.num_done += ok
            if ok:
                self._show(final_line=not self.is_tty)

    def log(self, message):
        with self.lock:
            print(("\r\033[K" if self.is_tty else "") + message, file=self.stream, flush=True)

    def close(self):
        if self.is_tty:
            print(file=self.stream, flush=True)

    def status(self):
        elapsed = time.perf_counter() - self.t0
        # fraction done counts partly fetched shards by their share of Content-Length
        partial = sum(got / total for got, total in self.active.values() if total)
        fraction = (self.num_done + partial) / max(self.num_shards, 1)
        eta = f"{elapsed * (1 - fraction) / fraction:.0f}s" if fraction > 0 else "?"
        speed = self.bytes_received / 1e6 / max(elapsed, 1e-9)
        return (
            f"shards {self.num_done}/{self.num_shards} | {self.bytes_received / 1e6:,.1f} MB | "
            f"{speed:.1f} MB/s | elapsed {elapsed:.0f}s | ETA {eta}"
        )

    def _show(self, final_line=False):
        self.last_print = time.perf_counter()
        end = "\n" if final_line else ""
        print(("\r\033[K" if self.is_tty else "") + self.status(), end=end, file=self.stream, flush=True)


def _normalize_base_url(base_url):
    """Accept http(s):// and file:// URLs, or a plain local folder; always end with '/' so names append."""
    if "://" not in base_url:
        base_url = pathlib.Path(os.path.abspath(base_url)).as_uri()
    return base_url if base_url.endswith("/") else base_url + "/"


def _fetch(url, tmp_path, index, progress, timeout_s):
    """Stream url into tmp_path, then check the size against Content-Length and that the parquet footer opens."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(tmp_path, "wb") as f:
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        progress.start(index, expected)
        received = 0
        while chunk := resp.read(CHUNK_BYTES):
            f.write(chunk)
            received += len(chunk)
            progress.add(index, len(chunk))
    if expected is not None and received != expected:
        raise IncompleteBody(f"received {received:,} bytes but Content-Length is {expected:,}")
    pq.read_metadata(tmp_path)  # raises on a truncated or non-parquet body, whatever the headers said


def download_shard(
    index, base_url, data_dir, max_attempts=MAX_ATTEMPTS, backoff_s=BACKOFF_S, timeout_s=TIMEOUT_S, progress=None
):
    """
    Download one shard into data_dir, unless it is already there (returns False then, True when downloaded).
    The body goes to a hidden temporary file in data_dir and is renamed to the shard name only once whole,
    so an interrupted or failed download never leaves a file that looks like a shard.
    """
    name = shard_name(index)
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
        return False
    url = _normalize_base_url(base_url) + name
    assert max_attempts >= 1, f"max_attempts must be >= 1, got {max_attempts}"
    progress = progress or Progress(1)
    for attempt in range(1, max_attempts + 1):
        tmp_path = os.path.join(data_dir, f".{name}.{uuid.uuid4().hex[:12]}.tmp")  # hidden, unique per attempt
        try:
            _fetch(url, tmp_path, index, progress, timeout_s)
            os.replace(tmp_path, path)  # atomic on POSIX: readers see no shard or the whole shard
            progress.end(index, ok=True)
            return True
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError: OSError; ArrowInvalid: ValueError
            progress.end(index, ok=False)
            error = e
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # an HTTPError holds the open response
            # a 4xx other than timeout / rate limit, or a missing local file, will not change on retry
            permanent = (
                isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code not in (408, 429)
            ) or (isinstance(e, urllib.error.URLError) and isinstance(e.reason, FileNotFoundError))
            if permanent or attempt == max_attempts:
                break
            wait_s = backoff_s * 2 ** (attempt - 1)
            progress.log(f"{name}: attempt {attempt}/{max_attempts} failed ({e}); retrying in {wait_s:g}s")
            time.sleep(wait_s)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
    raise DownloadError(f"could not download {url} after {attempt} attempt(s): {type(error).__name__}: {error}")


def download_shards(
    indices,
    base_url,
    data_dir,
    num_workers=4,
    max_attempts=MAX_ATTEMPTS,
    backoff_s=BACKOFF_S,
    timeout_s=TIMEOUT_S,
    stream=None,
):
    """
    Download the given shard indices in parallel (threads: the work is I/O), skipping those present.
    Returns the number downloaded; raises DownloadError naming every URL that failed, after the others finish.
    """
    stream = stream or sys.stdout
    os.makedirs(data_dir, exist_ok=True)
    todo = [i for i in indices if not os.path.exists(os.path.join(data_dir, shard_name(i)))]
    print(
        f"{len(todo)} shards to download into {data_dir} ({len(indices) - len(todo)} already present), "
        f"{num_workers} workers",
        file=stream,
        flush=True,
    )
    progress = Progress(len(todo), stream=stream)
    failures = []
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = [
            pool.submit(download_shard, i, base_url, data_dir, max_attempts, backoff_s, timeout_s, progress)
            for i in todo
        ]
        for future in as_completed(futures):
            try:
                future.result()
            except DownloadError as e:
                failures.append(str(e))
                progress.log(f"FAILED: {e}")
    progress.close()
    if failures:
        raise DownloadError(f"{len(failures)} of {len(todo)} shards failed:\n" + "\n".join(sorted(failures)))
    return len(todo)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Download pretraining shards 0..N-1 plus the validation shard.")
    parser.add_argument(
        "-n", "--num-files", type=int, default=-1, help="training shards to download, 0..N-1 (-1 = all)"
    )
    parser.add_argument("-w", "--num-workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="climbmix", help="which corpus")
    parser.add_argument(
        "--base-url", default=None, help="download from this http(s):// or file:// URL or local folder instead"
    )
    args = parser.parse_args(argv)

    default_url, val_index, subdir = DATASETS[args.dataset]
    num_train = val_index if args.num_files == -1 else args.num_files
    if not 0 <= num_train <= val_index:
        parser.error(f"-n must be -1 or 0..{val_index}: {args.dataset} has training shards 0..{val_index - 1}")
    # the validation shard first, so that a partial run cannot leave a training shard posing as the last file
    indices = [val_index] + list(range(num_train))
    data_dir = os.path.join(get_base_dir(), subdir)
    base_url = args.base_url or default_url
    t0 = time.perf_counter()
    try:
        num_downloaded = download_shards(
            indices, base_url, data_dir, args.num_workers, MAX_ATTEMPTS, BACKOFF_S, TIMEOUT_S
        )
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        print("Finished shards are kept; run the same command again to fetch the rest.", file=sys.stderr)
        return 1
    paths = list_parquet_files(data_dir)
    size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(
        f"Downloaded {num_downloaded} shards in {time.perf_counter() - t0:.1f}s from {base_url}; "
        f"{data_dir} now holds {len(paths)} shards ({size_mb:,.1f} MB), the last one is validation."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
