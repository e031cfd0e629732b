"""Dataset snapshots: verification against SHA256SUMS, row validation, http:// and https:// fetching."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import ssl
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import contract_env, run_trainer

from flywheel_trainer.contract import DatasetLocation
from flywheel_trainer.dataset import DATA_FILES, SFT_FILE, load_snapshot, parse_sums, write_snapshot
from flywheel_trainer.errors import DatasetError, TransientError

SFT_ROW = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "source": "correction",
    "interactionId": "i-42",
    "version": "v1",
}
DPO_ROW = {
    "prompt": [{"role": "user", "content": "Capital of France?"}],
    "chosen": [{"role": "assistant", "content": "Paris."}],
    "rejected": [{"role": "assistant", "content": "Lyon."}],
    "source": "alternative",
    "interactionId": "i-42",
    "version": "v1",
}


def local(directory: Path) -> DatasetLocation:
    return DatasetLocation(uri=str(directory), local_dir=directory)


def test_the_contract_examples_load(tmp_path: Path) -> None:
    sha = write_snapshot(tmp_path, [SFT_ROW], [SFT_ROW], [DPO_ROW], [])
    snap = load_snapshot(local(tmp_path), sha)
    assert snap.sft[0].messages[-1] == {"role": "assistant", "content": "Paris."}
    assert snap.sft[0].source == "correction"
    assert len(snap.sft_heldout) == 1
    assert snap.dpo[0].chosen[0]["content"] == "Paris." and snap.dpo[0].rejected[0]["content"] == "Lyon."
    assert snap.dpo_heldout == []


def test_sha256_is_that_of_the_sums_file_and_the_sums_file_is_sorted(tmp_path: Path) -> None:
    sha = write_snapshot(tmp_path, [SFT_ROW], [], [], [])
    sums = (tmp_path / "SHA256SUMS").read_bytes()
    assert hashlib.sha256(sums).hexdigest() == sha
    names = [line.split("  ")[1] for line in sums.decode().splitlines()]
    assert names == sorted(names) == list(DATA_FILES)
    assert parse_sums(sums)["dpo.jsonl"] == hashlib.sha256(b"").hexdigest()


def test_a_wrong_expected_sha256_is_refused(tmp_path: Path) -> None:
    write_snapshot(tmp_path, [SFT_ROW], [], [], [])
    with pytest.raises(DatasetError, match="dataset sha256 mismatch: FLYWHEEL_DATASET_SHA256 is 0000"):
        load_snapshot(local(tmp_path), "0" * 64)


def test_a_tampered_file_is_refused(tmp_path: Path) -> None:
    sha = write_snapshot(tmp_path, [SFT_ROW], [], [], [])
    (tmp_path / SFT_FILE).write_text(json.dumps(SFT_ROW).replace("Paris", "Lyon") + "\n")
    with pytest.raises(DatasetError, match="dataset file sft.jsonl has sha256 .* but SHA256SUMS says"):
        load_snapshot(local(tmp_path), sha)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    sha = write_snapshot(tmp_path, [SFT_ROW], [], [], [])
    (tmp_path / "dpo.heldout.jsonl").unlink()
    with pytest.raises(DatasetError, match="has no dpo.heldout.jsonl"):
        load_snapshot(local(tmp_path), sha)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a directory"):
        load_snapshot(local(tmp_path / "nope"), "0" * 64)


def _with_sums(directory: Path, files: dict[str, bytes]) -> str:
    """Write raw file contents (possibly invalid rows) with a matching SHA256SUMS."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in DATA_FILES:
        data = files.get(name, b"")
        (directory / name).write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    sums = "".join(lines).encode()
    (directory / "SHA256SUMS").write_bytes(sums)
    return hashlib.sha256(sums).hexdigest()


def _row(obj: object) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _replace(row: dict, **changes: object) -> dict:
    return {**row, **changes}


BAD_ROWS = [
    ("sft.jsonl", b"{not json}\n", "sft.jsonl line 1 is not valid JSON"),
    ("sft.jsonl", _row(SFT_ROW) + b"\n", "sft.jsonl line 2 is empty"),
    ("sft.jsonl", _row(SFT_ROW)[:-1], "the last line has no trailing newline"),
    ("sft.jsonl", b"\xff\n", "sft.jsonl is not UTF-8"),
    ("sft.jsonl", _row([1, 2]), "sft.jsonl line 1: a row must be a JSON object"),
    ("sft.jsonl", _row({"messages": []}), "'messages' must be a non-empty list of messages"),
    ("sft.jsonl", _row({"messages": [{"role": "assistant", "content": "hi"}]}), "needs a prompt and an answer"),
    ("sft.jsonl", _row(_replace(SFT_ROW, messages=SFT_ROW["messages"][:2])), "the last message of 'messages' must have role assistant, got user"),
    ("sft.heldout.jsonl", _row(_replace(SFT_ROW, messages=[{"role": "tool", "content": "x"}, SFT_ROW["messages"][2]])), "sft.heldout.jsonl line 1: messages[0].role is 'tool'"),
    ("sft.jsonl", _row(_replace(SFT_ROW, messages=[SFT_ROW["messages"][1], {"role": "assistant", "content": 5}])), "messages[1].content must be a string"),
    ("sft.jsonl", _row(_replace(SFT_ROW, messages=[SFT_ROW["messages"][1], {"role": "assistant", "content": "  "}])), "the assistant answer in 'messages' is empty"),
    ("sft.jsonl", _row(_replace(SFT_ROW, source=3)), "'source' must be a string"),
    ("dpo.jsonl", _row(_replace(DPO_ROW, chosen=[])), "dpo.jsonl line 1: 'chosen' must be a non-empty list of messages"),
    ("dpo.jsonl", _row({k: v for k, v in DPO_ROW.items() if k != "prompt"}), "'prompt' must be a non-empty list"),
    ("dpo.heldout.jsonl", _row(_replace(DPO_ROW, rejected=[{"role": "user", "content": "x"}])), "the last message of 'rejected' must have role assistant"),
]


@pytest.mark.parametrize("name,data,message", BAD_ROWS, ids=[m for _, _, m in BAD_ROWS])
def test_invalid_rows_are_refused_with_the_line(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    sha = _with_sums(tmp_path, {name: data})
    with pytest.raises(DatasetError) as raised:
        load_snapshot(local(tmp_path), sha)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "sums,message",
    [
        (b"zz  sft.jsonl\n", "SHA256SUMS line 1 is not '<sha256 hex>  <file name>'"),
        (("0" * 64 + "  sft.jsonl\n").encode(), "SHA256SUMS does not list dpo.heldout.jsonl, dpo.jsonl, sft.heldout.jsonl"),
        (("0" * 64 + "  sft.jsonl\n" + "0" * 64 + "  sft.jsonl\n").encode(), "lists sft.jsonl twice"),
    ],
)
def test_a_malformed_sums_file_is_refused(sums: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_sums(sums)


def test_the_trainer_exits_3_on_a_sha256_mismatch(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    done = run_trainer(contract_env(tmp_path, base_model, dataset, wrong), timeout=600)
    assert done.returncode == 3, done.stderr
    assert "dataset sha256 mismatch" in done.stderr


# -- http:// and https:// --------------------------------------------------------------------

TOKEN = "s3cr3t-token.Zq9/x+y="


class Server:
    """A test server on 127.0.0.1 serving ``root``. ``faults`` maps a path to a status to answer
    instead (only the first N times when ``fault_times`` maps the path to N); ``delays`` maps a
    path to seconds to wait before answering; ``requests`` records (path, Authorization header
    or None) for every GET; when ``token`` is set, a request without ``Authorization: Bearer
    <token>`` gets 401; ``redirects`` maps a path to a Location to answer 302 with (checked
    before the token)."""

    def __init__(self, root: Path, context: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.faults: dict[str, int] = {}
        self.fault_times: dict[str, int] = {}
        self.delays: dict[str, float] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.token: str | None = None
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                outer.requests.append((self.path, auth))
                if self.path in outer.delays:
                    time.sleep(outer.delays[self.path])
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if outer.token is not None and auth != f"Bearer {outer.token}":
                    self.send_error(401)
                    return
                status = outer.faults.get(self.path)
                if status is not None and outer.fault_times.get(self.path, 1) > 0:
                    if self.path in outer.fault_times:
                        outer.fault_times[self.path] -= 1
                    self.send_error(status)
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if context is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers are on 127.0.0.1: a proxy from the environment must not be used."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    """A plain HTTP server on 127.0.0.1 serving tmp_path/www (as the collector's Service speaks)."""
    root = tmp_path / "www"
    root.mkdir()
    server = Server(root)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, ssl.SSLContext]]:
    """A TLS server on 127.0.0.1 serving tmp_path/www, with a self-signed certificate, and a
    client context that trusts it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    root = tmp_path / "www"
    root.mkdir()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server = Server(root, server_ctx)
    try:
        yield server, ssl.create_default_context(cafile=str(cert))
    finally:
        server.close()


@pytest.fixture
def https_server(tls_server: tuple[Server, ssl.SSLContext]) -> tuple[str, ssl.SSLContext, Path, dict]:
    server, ctx = tls_server
    return server.base, ctx, server.root, server.faults


def remote(url: str, token: str | None = None, token_file: Path | None = None) -> DatasetLocation:
    return DatasetLocation(uri=url, http_base=url.rstrip("/"), token_file=token_file, token=token)


def test_https_snapshot_is_fetched_and_verified(https_server) -> None:
    base, ctx, root, _ = https_server
    sha = write_snapshot(root / "snap", [SFT_ROW], [], [DPO_ROW], [])
    snap = load_snapshot(DatasetLocation(uri=f"{base}/snap/", http_base=f"{base}/snap"), sha, ssl_context=ctx)
    assert len(snap.sft) == 1 and len(snap.dpo) == 1


def test_https_404_is_retried_then_transient(https_server) -> None:
    """With several collector replicas a new snapshot may not be visible on all of them yet."""
    base, ctx, root, _ = https_server
    with pytest.raises(TransientError, match="fetching .*/missing/SHA256SUMS failed 2 times, last: HTTP Error 404") as raised:
        load_snapshot(DatasetLocation(uri=base, http_base=f"{base}/missing"), "0" * 64, ssl_context=ctx, https_attempts=2, https_backoff=0.01)
    assert raised.value.exit_code == 75


def test_https_5xx_is_retried_then_transient(https_server) -> None:
    base, ctx, root, faults = https_server
    sha = write_snapshot(root / "snap", [SFT_ROW], [], [], [])
    faults["/snap/sft.jsonl"] = 503
    with pytest.raises(TransientError, match="fetching .*/snap/sft.jsonl failed 2 times"):
        load_snapshot(DatasetLocation(uri=base, http_base=f"{base}/snap"), sha, ssl_context=ctx, https_attempts=2, https_backoff=0.01)


def test_a_404_that_clears_on_a_retry_is_fetched(http_server: Server) -> None:
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    http_server.faults["/snap/SHA256SUMS"] = 404
    http_server.fault_times["/snap/SHA256SUMS"] = 2
    snap = load_snapshot(remote(f"{http_server.base}/snap"), sha, https_attempts=3, https_backoff=0.01)
    assert len(snap.sft) == 1
    assert [path for path, _ in http_server.requests][:3] == ["/snap/SHA256SUMS"] * 3


@pytest.mark.parametrize("status", [404, 408, 429, 500, 502, 503])
def test_transient_statuses_over_http_are_retried_then_exit_75(http_server: Server, status: int) -> None:
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    http_server.faults["/snap/sft.jsonl"] = status
    with pytest.raises(TransientError, match=f"fetching .*/snap/sft.jsonl failed 3 times, last: HTTP Error {status}") as raised:
        load_snapshot(remote(f"{http_server.base}/snap"), sha, https_attempts=3, https_backoff=0.01)
    assert raised.value.exit_code == 75
    assert [path for path, _ in http_server.requests].count("/snap/sft.jsonl") == 3


@pytest.mark.parametrize("status", [400, 405, 410])
def test_other_4xx_statuses_are_bad_configuration_at_once(http_server: Server, status: int) -> None:
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    http_server.faults["/snap/SHA256SUMS"] = status
    with pytest.raises(DatasetError, match=f"HTTP {status}") as raised:
        load_snapshot(remote(f"{http_server.base}/snap"), sha, https_attempts=3, https_backoff=0.01)
    assert raised.value.exit_code == 3
    assert http_server.requests == [("/snap/SHA256SUMS", None)], "not retried"


def test_a_refused_connection_is_retried_then_transient() -> None:
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="SHA256SUMS failed 2 times, last: .*(refused|Connection)") as raised:
        load_snapshot(remote(f"http://127.0.0.1:{port}/snap"), "0" * 64, https_attempts=2, https_backoff=0.01)
    assert raised.value.exit_code == 75


def test_a_timeout_is_retried_then_transient(http_server: Server) -> None:
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    http_server.delays["/snap/SHA256SUMS"] = 2.0
    started = time.monotonic()
    with pytest.raises(TransientError, match="SHA256SUMS failed 2 times, last: .*timed out") as raised:
        load_snapshot(remote(f"{http_server.base}/snap"), sha, https_attempts=2, https_timeout=0.2, https_backoff=0.01)
    assert raised.value.exit_code == 75
    assert time.monotonic() - started < 1.5, "the timeout applies"


def test_a_sha256_mismatch_over_http_is_bad_configuration(http_server: Server) -> None:
    write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    with pytest.raises(DatasetError, match="dataset sha256 mismatch") as raised:
        load_snapshot(remote(f"{http_server.base}/snap"), "0" * 64, https_attempts=3, https_backoff=0.01)
    assert raised.value.exit_code == 3
    assert http_server.requests == [("/snap/SHA256SUMS", None)], "nothing else is fetched, nothing retried"


def test_a_tampered_file_over_http_is_bad_configuration(http_server: Server) -> None:
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    (http_server.root / "snap" / SFT_FILE).write_text(json.dumps(SFT_ROW).replace("Paris", "Lyon") + "\n")
    with pytest.raises(DatasetError, match="dataset file sft.jsonl has sha256 .* but SHA256SUMS says") as raised:
        load_snapshot(remote(f"{http_server.base}/snap"), sha, https_attempts=3, https_backoff=0.01)
    assert raised.value.exit_code == 3


def test_an_untrusted_certificate_is_refused(https_server) -> None:
    base, _, root, _ = https_server
    sha = write_snapshot(root / "snap", [SFT_ROW], [], [], [])
    with pytest.raises(DatasetError, match="TLS certificate not trusted"):
        load_snapshot(DatasetLocation(uri=base, http_base=f"{base}/snap"), sha, ssl_context=ssl.create_default_context())


def _data_paths(prefix: str) -> list[str]:
    return [f"{prefix}/SHA256SUMS"] + [f"{prefix}/{name}" for name in DATA_FILES]


def test_http_snapshot_is_fetched_without_an_authorization_header(http_server: Server) -> None:
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [DPO_ROW], [])
    snap = load_snapshot(remote(f"{http_server.base}/snap/"), sha)
    assert len(snap.sft) == 1 and len(snap.dpo) == 1
    assert [path for path, _ in http_server.requests] == _data_paths("/snap")
    assert all(auth is None for _, auth in http_server.requests)


def test_the_bearer_token_is_sent_on_every_http_fetch(http_server: Server, tmp_path: Path) -> None:
    http_server.token = TOKEN
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [DPO_ROW], [])
    snap = load_snapshot(remote(f"{http_server.base}/snap", TOKEN, tmp_path / "token"), sha)
    assert len(snap.sft) == 1
    assert http_server.requests == [(path, f"Bearer {TOKEN}") for path in _data_paths("/snap")]


def test_the_bearer_token_is_sent_over_https(tls_server: tuple[Server, ssl.SSLContext], tmp_path: Path) -> None:
    server, ctx = tls_server
    server.token = TOKEN
    sha = write_snapshot(server.root / "snap", [SFT_ROW], [], [], [])
    load_snapshot(remote(f"{server.base}/snap", TOKEN, tmp_path / "token"), sha, ssl_context=ctx)
    assert server.requests == [(path, f"Bearer {TOKEN}") for path in _data_paths("/snap")]


def test_a_401_without_a_token_says_the_token_file_is_not_set(http_server: Server) -> None:
    http_server.token = TOKEN
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    with pytest.raises(DatasetError) as raised:
        load_snapshot(remote(f"{http_server.base}/snap"), sha, https_attempts=3, https_backoff=0.01)
    message = str(raised.value)
    assert "HTTP 401" in message
    assert "the server wants a bearer token and FLYWHEEL_DATASET_TOKEN_FILE is not set" in message
    assert raised.value.exit_code == 3
    assert http_server.requests == [("/snap/SHA256SUMS", None)], "a 401 is not retried"


def test_a_refused_token_is_a_dataset_error_that_does_not_quote_it(http_server: Server, tmp_path: Path) -> None:
    http_server.token = TOKEN
    wrong = "wrong-token-0123456789"
    sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
    with pytest.raises(DatasetError) as raised:
        load_snapshot(remote(f"{http_server.base}/snap", wrong, tmp_path / "token"), sha)
    message = str(raised.value)
    assert f"HTTP 401 Unauthorized: the server refused the bearer token from FLYWHEEL_DATASET_TOKEN_FILE={tmp_path / 'token'}" in message
    assert wrong not in message and TOKEN not in message
    assert raised.value.exit_code == 3
    assert http_server.requests == [("/snap/SHA256SUMS", f"Bearer {wrong}")]


def test_a_403_says_the_token_may_not_read(http_server: Server, tmp_path: Path) -> None:
    http_server.token = TOKEN
    http_server.faults["/snap/SHA256SUMS"] = 403
    with pytest.raises(DatasetError) as raised:
        load_snapshot(remote(f"{http_server.base}/snap", TOKEN, tmp_path / "token"), "0" * 64)
    message = str(raised.value)
    assert "HTTP 403" in message and "refused the bearer token" in message and "read token" in message
    assert TOKEN not in message


def test_a_redirect_does_not_carry_the_token(http_server: Server, tmp_path: Path) -> None:
    other_root = tmp_path / "other"
    other = Server(other_root)
    try:
        sha = write_snapshot(http_server.root / "snap", [SFT_ROW], [], [], [])
        write_snapshot(other_root / "snap", [SFT_ROW], [], [], [])
        http_server.token = TOKEN
        http_server.redirects["/snap/SHA256SUMS"] = f"{other.base}/snap/SHA256SUMS"
        load_snapshot(remote(f"{http_server.base}/snap", TOKEN, tmp_path / "token"), sha)
        assert other.requests == [("/snap/SHA256SUMS", None)]
        assert http_server.requests[0] == ("/snap/SHA256SUMS", f"Bearer {TOKEN}")
    finally:
        other.close()


# -- the token through the whole process ------------------------------------------------------


def _served_snapshot(server: Server, snapshot: tuple[Path, str]) -> str:
    dataset, _ = snapshot
    shutil.copytree(dataset, server.root / "ds")
    return f"{server.base}/ds"


def test_the_trainer_fetches_over_http_with_the_token_and_never_prints_it(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], http_server: Server
) -> None:
    http_server.token = TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    env = contract_env(
        tmp_path / "run", base_model, snapshot[0], snapshot[1], {"maxSteps": "2", "batchSize": "2"},
        FLYWHEEL_DATASET_URI=_served_snapshot(http_server, snapshot), FLYWHEEL_DATASET_TOKEN_FILE=str(token_file),
    )
    done = run_trainer(env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert http_server.requests == [(path, f"Bearer {TOKEN}") for path in _data_paths("/ds")]
    assert f"bearer token from FLYWHEEL_DATASET_TOKEN_FILE={token_file}" in done.stderr
    result = Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text()
    training = (tmp_path / "run" / "out" / "flywheel-training.json").read_text()
    for text in (done.stdout, done.stderr, result, training):
        assert TOKEN not in text


def test_the_trainer_exits_3_when_the_server_refuses_the_token(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], http_server: Server
) -> None:
    http_server.token = TOKEN
    wrong = "not-the-token-9f8e7d"
    token_file = tmp_path / "token"
    token_file.write_text(wrong)
    env = contract_env(
        tmp_path / "run", base_model, snapshot[0], snapshot[1],
        FLYWHEEL_DATASET_URI=_served_snapshot(http_server, snapshot), FLYWHEEL_DATASET_TOKEN_FILE=str(token_file),
    )
    done = run_trainer(env, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "bad dataset: fetching" in done.stderr and "HTTP 401" in done.stderr
    assert f"refused the bearer token from FLYWHEEL_DATASET_TOKEN_FILE={token_file}" in done.stderr
    assert wrong not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_the_trainer_exits_75_when_the_snapshot_is_not_found(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], http_server: Server
) -> None:
    env = contract_env(
        tmp_path / "run", base_model, snapshot[0], snapshot[1], FLYWHEEL_DATASET_URI=f"{http_server.base}/no-such-snapshot"
    )
    done = run_trainer(env, timeout=600)
    assert done.returncode == 75, done.stderr
    assert "transient failure: fetching" in done.stderr and "no-such-snapshot/SHA256SUMS failed 3 times" in done.stderr
    assert "HTTP Error 404" in done.stderr
    assert [path for path, _ in http_server.requests] == ["/no-such-snapshot/SHA256SUMS"] * 3
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()
