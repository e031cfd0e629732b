"""Dataset snapshots: verification against SHA256SUMS, row validation, https:// fetching."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import ssl
import subprocess
import threading
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
    done = run_trainer(contract_env(tmp_path, base_model, dataset, wrong), timeout=60)
    assert done.returncode == 3, done.stderr
    assert "dataset sha256 mismatch" in done.stderr


# -- https:// ----------------------------------------------------------------------------------


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, ssl.SSLContext, Path, dict]]:
    """A TLS server on 127.0.0.1 serving tmp_path/www, with a self-signed certificate."""
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
    faults: dict[str, int] = {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            status = faults.get(self.path)
            if status is not None:
                self.send_error(status)
                return
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", client_ctx, root, faults
    finally:
        server.shutdown()
        server.server_close()


def test_https_snapshot_is_fetched_and_verified(https_server) -> None:
    base, ctx, root, _ = https_server
    sha = write_snapshot(root / "snap", [SFT_ROW], [], [DPO_ROW], [])
    snap = load_snapshot(DatasetLocation(uri=f"{base}/snap/", https_base=f"{base}/snap"), sha, ssl_context=ctx)
    assert len(snap.sft) == 1 and len(snap.dpo) == 1


def test_https_404_is_a_dataset_error(https_server) -> None:
    base, ctx, root, _ = https_server
    with pytest.raises(DatasetError, match="HTTP 404"):
        load_snapshot(DatasetLocation(uri=base, https_base=f"{base}/missing"), "0" * 64, ssl_context=ctx)


def test_https_5xx_is_retried_then_transient(https_server) -> None:
    base, ctx, root, faults = https_server
    sha = write_snapshot(root / "snap", [SFT_ROW], [], [], [])
    faults["/snap/sft.jsonl"] = 503
    with pytest.raises(TransientError, match="fetching .*/snap/sft.jsonl failed 2 times"):
        load_snapshot(DatasetLocation(uri=base, https_base=f"{base}/snap"), sha, ssl_context=ctx, https_attempts=2, https_backoff=0.01)


def test_an_untrusted_certificate_is_refused(https_server) -> None:
    base, _, root, _ = https_server
    sha = write_snapshot(root / "snap", [SFT_ROW], [], [], [])
    with pytest.raises(DatasetError, match="TLS certificate not trusted"):
        load_snapshot(DatasetLocation(uri=base, https_base=f"{base}/snap"), sha, ssl_context=ssl.create_default_context())
