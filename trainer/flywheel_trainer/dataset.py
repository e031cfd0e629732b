"""Reading a dataset snapshot: fetch the files, verify SHA256SUMS, parse and check the rows."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .contract import TOKEN_FILE_VAR, DatasetLocation
from .errors import DatasetError, TransientError

SFT_FILE = "sft.jsonl"
SFT_HELDOUT_FILE = "sft.heldout.jsonl"
DPO_FILE = "dpo.jsonl"
DPO_HELDOUT_FILE = "dpo.heldout.jsonl"
SUMS_FILE = "SHA256SUMS"
DATA_FILES = tuple(sorted((SFT_FILE, SFT_HELDOUT_FILE, DPO_FILE, DPO_HELDOUT_FILE)))  # by name, as in SHA256SUMS
ROLES = ("system", "user", "assistant")

Message = dict[str, str]
# HTTP statuses of a dataset fetch that are retried and, after the last try, transient (exit 75),
# like any 5xx, a broken connection or a timeout.
TRANSIENT_STATUSES = (404, 408, 429)


@dataclass(frozen=True)
class SftRow:
    messages: list[Message]
    source: str | None = None


@dataclass(frozen=True)
class DpoRow:
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    source: str | None = None


@dataclass
class Snapshot:
    sha256: str
    sft: list[SftRow] = field(default_factory=list)
    sft_heldout: list[SftRow] = field(default_factory=list)
    dpo: list[DpoRow] = field(default_factory=list)
    dpo_heldout: list[DpoRow] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Fetching


Fetch = Callable[[str], bytes]


def _read_local(directory: Path) -> Fetch:
    def fetch(name: str) -> bytes:
        path = directory / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not directory.is_dir():
                raise DatasetError(f"FLYWHEEL_DATASET_URI: {directory} is not a directory") from None
            raise DatasetError(f"dataset snapshot {directory} has no {name} (every snapshot file must exist)") from None
        except IsADirectoryError:
            raise DatasetError(f"dataset snapshot {directory}: {name} is a directory, not a file") from None
        except OSError as e:
            raise TransientError(f"reading {path}: {e}") from e

    return fetch


def _refused(url: str, code: int, reason: str, location: DatasetLocation) -> DatasetError:
    """A 401 or 403: the bearer token was refused, or the server wants one and none was set.

    The message names the token's file, never the token."""
    if location.token is None:
        why = f"the server wants a bearer token and {TOKEN_FILE_VAR} is not set"
    else:
        why = f"the server refused the bearer token from {TOKEN_FILE_VAR}={location.token_file}"
    if code == 403:
        why += " (403: the token is not allowed to read datasets; the collector needs a read token)"
    return DatasetError(f"fetching {url}: HTTP {code} {reason}: {why}")


def _read_http(location: DatasetLocation, attempts: int, timeout: float, context: ssl.SSLContext | None, backoff: float) -> Fetch:
    base = location.http_base
    assert base is not None

    def fetch(name: str) -> bytes:
        url = f"{base}/{name}"
        delay = backoff
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(url)
            if location.token is not None:
                # Unredirected: a redirect to another host or scheme does not carry the token.
                request.add_unredirected_header("Authorization", f"Bearer {location.token}")
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                    return response.read()
            except urllib.error.HTTPError as e:
                if e.code in (401, 403):
                    raise _refused(url, e.code, e.reason, location) from None
                # 404 (a snapshot not yet visible on every collector replica), 408, 429 and the
                # 5xx family may pass; any other status will not.
                if e.code not in TRANSIENT_STATUSES and e.code < 500:
                    raise DatasetError(f"fetching {url}: HTTP {e.code} {e.reason}") from None
                failure: Exception = e
            except urllib.error.URLError as e:
                if isinstance(e.reason, ssl.SSLCertVerificationError):
                    raise DatasetError(f"fetching {url}: TLS certificate not trusted: {e.reason.verify_message}") from None
                failure = e
            except (http.client.HTTPException, OSError) as e:  # resets, timeouts, broken reads
                failure = e
            if attempt < attempts:
                time.sleep(delay)
                delay *= 2
        raise TransientError(f"fetching {url} failed {attempts} times, last: {failure}")

    return fetch


# ---------------------------------------------------------------------------------------------
# Verification


def parse_sums(text: bytes) -> dict[str, str]:
    """Parse ``SHA256SUMS``: ``<sha256 hex>  <file name>`` per line, one line per data file."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{SUMS_FILE} is not UTF-8") from None
    sums: dict[str, str] = {}
    for number, line in enumerate(decoded.splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise DatasetError(f"{SUMS_FILE} line {number} is not '<sha256 hex>  <file name>': {line!r}")
        if name in sums:
            raise DatasetError(f"{SUMS_FILE} lists {name} twice")
        sums[name] = digest
    missing = [n for n in DATA_FILES if n not in sums]
    if missing:
        raise DatasetError(f"{SUMS_FILE} does not list {', '.join(missing)}")
    return sums


def check_snapshot_sha256(expected_sha256: str, sums_bytes: bytes) -> None:
    """The snapshot's sha256 is the sha256 of its SHA256SUMS file's bytes."""
    actual = hashlib.sha256(sums_bytes).hexdigest()
    if actual != expected_sha256:
        raise DatasetError(
            f"dataset sha256 mismatch: FLYWHEEL_DATASET_SHA256 is {expected_sha256} but the snapshot's "
            f"{SUMS_FILE} hashes to {actual}"
        )


def verify(expected_sha256: str, sums_bytes: bytes, files: dict[str, bytes]) -> None:
    """Check the snapshot's sha256 (that of SHA256SUMS) and every file against SHA256SUMS."""
    check_snapshot_sha256(expected_sha256, sums_bytes)
    sums = parse_sums(sums_bytes)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest != sums[name]:
            raise DatasetError(f"dataset file {name} has sha256 {digest}, but {SUMS_FILE} says {sums[name]}")


# ---------------------------------------------------------------------------------------------
# Rows


def _messages(where: str, value: object, key: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: {key!r} must be a non-empty list of messages")
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DatasetError(f"{where}: {key}[{i}] is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DatasetError(f"{where}: {key}[{i}].role is {role!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DatasetError(f"{where}: {key}[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def _ends_with_answer(where: str, messages: list[Message], key: str) -> None:
    last = messages[-1]
    if last["role"] != "assistant":
        raise DatasetError(f"{where}: the last message of {key!r} must have role assistant, got {last['role']}")
    if not last["content"].strip():
        raise DatasetError(f"{where}: the assistant answer in {key!r} is empty")


def _source(where: str, obj: dict) -> str | None:
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise DatasetError(f"{where}: 'source' must be a string")
    return source


def parse_sft_row(where: str, obj: object) -> SftRow:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: a row must be a JSON object")
    messages = _messages(where, obj.get("messages"), "messages")
    if len(messages) < 2:
        raise DatasetError(f"{where}: 'messages' needs a prompt and an answer (at least 2 messages)")
    _ends_with_answer(where, messages, "messages")
    return SftRow(messages=messages, source=_source(where, obj))


def parse_dpo_row(where: str, obj: object) -> DpoRow:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: a row must be a JSON object")
    prompt = _messages(where, obj.get("prompt"), "prompt")
    chosen = _messages(where, obj.get("chosen"), "chosen")
    rejected = _messages(where, obj.get("rejected"), "rejected")
    _ends_with_answer(where, chosen, "chosen")
    _ends_with_answer(where, rejected, "rejected")
    return DpoRow(prompt=prompt, chosen=chosen, rejected=rejected, source=_source(where, obj))


def parse_jsonl(name: str, data: bytes, parse_row: Callable[[str, object], object]) -> list:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{name} is not UTF-8 (byte {e.start})") from None
    if text and not text.endswith("\n"):
        raise DatasetError(f"{name}: the last line has no trailing newline (every line ends with \\n)")
    rows = []
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        where = f"{name} line {number}"
        if not line.strip():
            raise DatasetError(f"{where} is empty (one JSON object per line)")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where} is not valid JSON: {e.msg} at column {e.colno}") from None
        rows.append(parse_row(where, obj))
    return rows


def load_snapshot(
    location: DatasetLocation,
    expected_sha256: str,
    *,
    https_attempts: int = 3,
    https_timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
    https_backoff: float = 2.0,
) -> Snapshot:
    """Fetch, verify and parse a snapshot. Raises DatasetError (exit 3) or TransientError (75).

    An http:// or https:// snapshot is fetched with ``Authorization: Bearer <token>`` when the
    location has a token; the ``https_*`` options apply to both schemes. Each file gets
    ``https_attempts`` tries: a 404, 408, 429 or 5xx answer, a broken connection or a timeout is
    tried again and, after the last try, a TransientError; 401 and 403 (the token), any other
    4xx and an untrusted certificate are a DatasetError at once."""
    if location.local_dir is not None:
        fetch = _read_local(location.local_dir)
    else:
        fetch = _read_http(location, https_attempts, https_timeout, ssl_context, https_backoff)
    sums = fetch(SUMS_FILE)
    # Check the snapshot's own sha256 before fetching anything else: a wrong snapshot fails fast.
    check_snapshot_sha256(expected_sha256, sums)
    files = {name: fetch(name) for name in DATA_FILES}
    verify(expected_sha256, sums, files)
    return Snapshot(
        sha256=expected_sha256,
        sft=parse_jsonl(SFT_FILE, files[SFT_FILE], parse_sft_row),
        sft_heldout=parse_jsonl(SFT_HELDOUT_FILE, files[SFT_HELDOUT_FILE], parse_sft_row),
        dpo=parse_jsonl(DPO_FILE, files[DPO_FILE], parse_dpo_row),
        dpo_heldout=parse_jsonl(DPO_HELDOUT_FILE, files[DPO_HELDOUT_FILE], parse_dpo_row),
    )


def write_snapshot(directory: Path, sft: list[dict], sft_heldout: list[dict], dpo: list[dict], dpo_heldout: list[dict], manifest: dict | None = None) -> str:
    """Write a snapshot in the contract's layout and return its sha256 (for tests and benchmarks)."""
    directory.mkdir(parents=True, exist_ok=True)
    contents = {SFT_FILE: sft, SFT_HELDOUT_FILE: sft_heldout, DPO_FILE: dpo, DPO_HELDOUT_FILE: dpo_heldout}
    sums = []
    for name in DATA_FILES:
        data = "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in contents[name]).encode()
        (directory / name).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    sums_bytes = "".join(sums).encode()
    (directory / SUMS_FILE).write_bytes(sums_bytes)
    sha = hashlib.sha256(sums_bytes).hexdigest()
    body = dict(manifest or {})
    body.setdefault("sha256", sha)
    body.setdefault("counts", {"sft": len(sft), "sftHeldOut": len(sft_heldout), "dpo": len(dpo), "dpoHeldOut": len(dpo_heldout)})
    (directory / "manifest.json").write_text(json.dumps(body, indent=2) + "\n")
    return sha
