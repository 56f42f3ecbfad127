"""Shard discovery, split/rank iteration, and the downloader against a local HTTP server (no network)."""

import http.server
import io
import os
import pathlib
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset

VAL_INDEX = dataset.DATASETS["climbmix"][1]


def make_shard(texts, row_group_size=4):
    """Parquet bytes in the layout of the real shards: one text column, row groups, zstd."""
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=row_group_size, compression="zstd")
    return buf.getvalue()


def write_shards(data_dir, num_files, row_groups=5, row_group_size=4):
    os.makedirs(data_dir, exist_ok=True)
    for f in range(num_files):
        texts = [f"file {f} group {g} doc {d}" for g in range(row_groups) for d in range(row_group_size)]
        with open(os.path.join(data_dir, dataset.shard_name(f)), "wb") as out:
            out.write(make_shard(texts, row_group_size))


class ShardServer:
    """
    A local HTTP server for shard files. `failures[name]` lists how the next requests for that name fail
    ("500", "drop": headers promise the whole body but the connection closes halfway, "nolength": half the
    body with no Content-Length); "500*" / "drop*" fail forever. Every request path is recorded.
    """

    def __init__(self, files):
        self.files, self.failures, self.requests = dict(files), {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append(name)
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                plan = outer.failures.get(name, [])
                mode = plan[0].rstrip("*") if plan else "ok"
                if plan and not plan[0].endswith("*"):
                    plan.pop(0)
                if mode == "500":
                    self.send_error(500)
                    return
                self.send_response(200)
                if mode != "nolength":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    monkeypatch.delenv("NANOCHAT_DATA_DIR", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "base"


@pytest.fixture
def server():
    files = {dataset.shard_name(i): make_shard([f"shard {i} doc {d}" for d in range(12)]) for i in (0, 1, 2, VAL_INDEX)}
    srv = ShardServer(files)
    yield srv
    srv.close()


def fetch(server, tmp_path, indices, **kwargs):
    data_dir = str(tmp_path / "shards")
    kwargs = {"num_workers": 2, "max_attempts": 3, "backoff_s": 0.01, "timeout_s": 10, "stream": io.StringIO()} | kwargs
    return data_dir, dataset.download_shards(indices, server.url, data_dir, **kwargs)


def test_cli_downloads_train_shards_and_val(base_dir, server, capsys):
    """`-n 3` fetches shards 0..2 plus the last (validation) shard byte-exact, the val shard sorts last."""
    assert dataset.main(["-n", "3", "-w", "2", "--base-url", server.url]) == 0
    data_dir = base_dir / "base_data_climbmix"
    paths = dataset.list_parquet_files(str(data_dir))
    assert [os.path.basename(p) for p in paths] == [dataset.shard_name(i) for i in (0, 1, 2, VAL_INDEX)]
    for p in paths:
        assert pathlib.Path(p).read_bytes() == server.files[os.path.basename(p)]
    assert sorted(os.listdir(data_dir)) == sorted(os.path.basename(p) for p in paths)  # no temp files left
    out = capsys.readouterr().out
    assert "MB/s" in out and "ETA" in out
    assert dataset.get_data_dir() == str(data_dir)  # two or more downloaded shards replace the sample


def test_flaky_server_is_retried(server, tmp_path):
    """A 500 and a connection dropped mid-body are retried with backoff and the shards still arrive whole."""
    for i in (0, 1):
        server.failures[dataset.shard_name(i)] = ["500", "drop"]
    data_dir, n = fetch(server, tmp_path, [VAL_INDEX, 0, 1])
    assert n == 3
    for i in (0, 1):
        name = dataset.shard_name(i)
        assert server.requests.count(name) == 3
        assert pathlib.Path(data_dir, name).read_bytes() == server.files[name]


def test_failing_server_names_url_and_leaves_nothing(server, tmp_path):
    """A shard that always fails raises DownloadError naming its URL, leaving no shard and no temp file."""
    name = dataset.shard_name(1)
    server.failures[name] = ["500*"]
    with pytest.raises(dataset.DownloadError) as excinfo:
        fetch(server, tmp_path, [1])
    assert server.url + name in str(excinfo.value)
    assert server.requests.count(name) == 3  # max_attempts
    assert os.listdir(tmp_path / "shards") == []


def test_missing_shard_is_not_retried(server, tmp_path):
    """A 404 is permanent: one request, then a DownloadError naming the URL."""
    with pytest.raises(dataset.DownloadError, match="shard_00005.parquet"):
        fetch(server, tmp_path, [5])
    assert server.requests == [dataset.shard_name(5)]


def test_cli_failure_exits_nonzero(base_dir, server, capsys, monkeypatch):
    """The CLI reports the failing URL on stderr and returns a nonzero exit code; good shards are kept."""
    monkeypatch.setattr(dataset, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(dataset, "BACKOFF_S", 0.01)
    server.failures[dataset.shard_name(2)] = ["drop*"]
    assert dataset.main(["-n", "3", "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert server.url + dataset.shard_name(2) in err
    names = sorted(os.listdir(base_dir / "base_data_climbmix"))
    assert names == [dataset.shard_name(i) for i in (0, 1, VAL_INDEX)]


@pytest.mark.parametrize("mode", ["drop*", "nolength*"])
def test_truncated_body_is_rejected(server, tmp_path, mode):
    """A body shorter than Content-Length, or cut short with no Content-Length, never becomes a shard."""
    server.failures[dataset.shard_name(0)] = [mode]
    with pytest.raises(dataset.DownloadError, match="shard_00000.parquet"):
        fetch(server, tmp_path, [0])
    assert os.listdir(tmp_path / "shards") == []


def test_present_shards_are_skipped(server, tmp_path):
    """Shards already on disk are not requested again and are left untouched."""
    data_dir = tmp_path / "shards"
    data_dir.mkdir()
    (data_dir / dataset.shard_name(0)).write_bytes(b"already here")
    _, n = fetch(server, tmp_path, [VAL_INDEX, 0, 1])
    assert n == 2
    assert dataset.shard_name(0) not in server.requests
    assert (data_dir / dataset.shard_name(0)).read_bytes() == b"already here"


def test_file_url_and_local_folder(tmp_path):
    """file:// URLs and plain folders work as --base-url (mirrors, offline copies)."""
    mirror = tmp_path / "mirror"
    write_shards(mirror, 2)
    for base_url, dest in [(mirror.as_uri(), "a"), (str(mirror), "b")]:
        data_dir = str(tmp_path / dest)
        n = dataset.download_shards([0, 1], base_url, data_dir, num_workers=1, stream=io.StringIO())
        assert n == 2
        name = dataset.shard_name(1)
        assert pathlib.Path(data_dir, name).read_bytes() == (mirror / name).read_bytes()


def test_get_data_dir_fallback(base_dir, tmp_path, monkeypatch):
    """The embedded sample is used until >= 2 shards are downloaded; $NANOCHAT_DATA_DIR overrides both."""
    assert dataset.get_data_dir() == dataset.SAMPLE_DATA_DIR
    downloaded = base_dir / "base_data_climbmix"
    write_shards(downloaded, 1)
    assert dataset.get_data_dir() == dataset.SAMPLE_DATA_DIR
    write_shards(downloaded, 2)
    assert dataset.get_data_dir() == str(downloaded)
    assert dataset.get_data_dir("fineweb-edu") == dataset.SAMPLE_DATA_DIR  # its own folder
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "elsewhere"))
    assert dataset.get_data_dir() == str(tmp_path / "elsewhere")


def test_embedded_sample_layout():
    """The shipped sample has the real layout: >= 2 shards, a single text column, several row groups each."""
    paths = dataset.list_parquet_files(dataset.SAMPLE_DATA_DIR)
    assert len(paths) >= 2
    assert [os.path.basename(p) for p in paths] == [dataset.shard_name(i) for i in range(len(paths))]
    for path in paths:
        meta = pq.read_metadata(path)
        assert meta.schema.to_arrow_schema() == pa.schema([("text", pa.string())])
        assert meta.num_row_groups >= 4
        assert meta.row_group(0).column(0).compression == "ZSTD"


def test_splits_disjoint_and_ranks_partition_row_groups(tmp_path):
    """train = all files but the last, val = the last; rank strides split the row groups exactly."""
    data_dir = str(tmp_path / "shards")
    write_shards(data_dir, 3, row_groups=5)
    train = [t for batch in dataset.parquets_iter_batched("train", data_dir=data_dir) for t in batch]
    val = [t for batch in dataset.parquets_iter_batched("val", data_dir=data_dir) for t in batch]
    assert len(train) == 2 * 5 * 4 and len(val) == 5 * 4
    assert all(t.startswith("file 2 ") for t in val) and not set(train) & set(val)
    world_size = 3
    per_rank = [
        [t for batch in dataset.parquets_iter_batched("train", r, world_size, data_dir) for t in batch]
        for r in range(world_size)
    ]
    assert sorted(t for rank in per_rank for t in rank) == sorted(train)
    for r in range(world_size):
        groups = {int(t.split()[3]) for t in per_rank[r]}
        assert groups == {g for g in range(5) if g % world_size == r}


def test_sample_val_split_is_last_file():
    """On the embedded sample, the val split yields exactly the rows of the last shard, train none of them."""
    paths = dataset.list_parquet_files(dataset.SAMPLE_DATA_DIR)
    val = [t for b in dataset.parquets_iter_batched("val", data_dir=dataset.SAMPLE_DATA_DIR) for t in b]
    assert val == pq.read_table(paths[-1]).column("text").to_pylist()
    first_train = next(dataset.parquets_iter_batched("train", data_dir=dataset.SAMPLE_DATA_DIR))
    assert first_train == pq.ParquetFile(paths[0]).read_row_group(0).column("text").to_pylist()
