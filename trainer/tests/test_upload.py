"""s3:// outputs: the upload against a real S3-compatible server (moto's), and its failure classes.

The moto tests need ``FLYWHEEL_MOTO_SERVER`` (the path of moto's ``moto_server``; ``.ci/run``
installs it into ``.tools/moto``); without it they skip, unless ``FLYWHEEL_REQUIRE_MOTO=1``.
The failure classes that need no object store (throttling, 5xx, refusals, timeouts, missing
credentials) are tested against small local HTTP servers and always run.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import contract_env, run_trainer

from flywheel_trainer.contract import S3Target
from flywheel_trainer.errors import ConfigError, TransientError
from flywheel_trainer.upload import _redact, check_bucket, classify, make_client, regular_files, upload_directory

ACCESS_KEY = "AKIAFLYWHEELTEST0001"
SECRET_KEY = "flywheel-test-secret-0f3c9a7e1d"  # must never be printed
AWS_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(endpoint: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Static test credentials and the endpoint; no config file, no instance metadata."""
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "2",
    }
    env.update(extra)
    return env


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Sets the AWS variables in this process (for the in-process tests); none of the machine's own."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def set_env(endpoint: str, **extra: str) -> dict[str, str]:
        env = aws_env(endpoint, tmp_path, **extra)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return set_env


# -- moto's S3 server -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = os.environ.get("FLYWHEEL_MOTO_SERVER", "")
    if not binary:
        reason = "FLYWHEEL_MOTO_SERVER is not set (the path of moto's moto_server; .ci/run installs it into .tools/moto)"
        if os.environ.get("FLYWHEEL_REQUIRE_MOTO") == "1":
            pytest.fail(f"FLYWHEEL_REQUIRE_MOTO=1 but {reason}")
        pytest.skip(reason)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"FLYWHEEL_MOTO_SERVER={binary!r} is not an executable")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"moto_server exited: {log.read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not listen within 60 s"
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def bucket(moto_endpoint: str, aws, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A new bucket on the moto server; returns (endpoint, bucket name)."""
    aws(moto_endpoint)
    name = "flywheel-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    make_client().create_bucket(Bucket=name)
    return moto_endpoint, name


def objects(bucket: str) -> dict[str, bytes]:
    client = make_client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def test_a_full_run_uploads_every_file_and_reports_the_s3_uri(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], bucket: tuple[str, str]
) -> None:
    endpoint, name = bucket
    dataset, sha = snapshot
    uri = f"s3://{name}/support-chat/v1-ft"
    out = tmp_path / "output"
    env = contract_env(
        tmp_path, base_model, dataset, sha, {"maxSteps": "3", "batchSize": "2", "mergeAdapter": "true"},
        FLYWHEEL_OUTPUT_URI=uri, FLYWHEEL_OUTPUT_DIR=str(out), **aws_env(endpoint, tmp_path),
    )
    done = run_trainer(env)
    assert done.returncode == 0, done.stderr[-3000:]

    result_text = Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text()
    result = json.loads(result_text)
    assert result["uri"] == uri and result["artifact"] == "model"

    local = {relative: path.read_bytes() for path, relative in regular_files(out)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "flywheel-training.json",
            "adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(local)
    assert objects(name) == {f"support-chat/v1-ft/{relative}": data for relative, data in local.items()}
    total = sum(len(data) for data in local.values())
    assert f"uploaded {len(local)} files ({total} bytes) to {uri}" in done.stderr
    training = (out / "flywheel-training.json").read_text()
    for text in (done.stdout, done.stderr, result_text, training):
        assert SECRET_KEY not in text


def test_the_process_exits_3_before_training_when_the_bucket_does_not_exist(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], moto_endpoint: str
) -> None:
    dataset, sha = snapshot
    env = contract_env(
        tmp_path, base_model, dataset, sha,
        FLYWHEEL_OUTPUT_URI="s3://no-such-bucket-0042/x", FLYWHEEL_OUTPUT_DIR=str(tmp_path / "output"),
        **aws_env(moto_endpoint, tmp_path),
    )
    done = run_trainer(env, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "bad configuration: checking the bucket of FLYWHEEL_OUTPUT_URI=s3://no-such-bucket-0042/x: 404" in done.stderr
    assert "the bucket does not exist" in done.stderr
    assert "dataset verified" not in done.stderr, "it fails before the dataset and the training"
    assert SECRET_KEY not in done.stdout + done.stderr
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_an_upload_to_a_missing_bucket_is_bad_configuration(tmp_path: Path, bucket: tuple[str, str]) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as raised:
        upload_directory(tmp_path / "model", S3Target("s3://no-such-bucket-0042/x", "no-such-bucket-0042", "x"))
    message = str(raised.value)
    assert raised.value.exit_code == 3
    assert "uploading config.json to FLYWHEEL_OUTPUT_URI=s3://no-such-bucket-0042/x: NoSuchBucket (HTTP 404)" in message
    assert SECRET_KEY not in message


def test_large_files_go_up_in_parts_and_keys_keep_relative_paths(tmp_path: Path, bucket: tuple[str, str]) -> None:
    _, name = bucket
    model = tmp_path / "model"
    (model / "sub" / "deeper").mkdir(parents=True)
    big = os.urandom(9 * 2**20)  # over boto3's 8 MiB multipart threshold: two parts
    (model / "model-00001.safetensors").write_bytes(big)
    (model / "sub" / "deeper" / "a.json").write_text('{"a": 1}')
    (model / "empty").write_bytes(b"")
    (model / "link").symlink_to(model / "sub" / "deeper" / "a.json")
    done = upload_directory(model, S3Target(f"s3://{name}", name, ""))
    assert (done.files, done.bytes) == (3, len(big) + 8)
    stored = objects(name)
    assert stored == {"model-00001.safetensors": big, "sub/deeper/a.json": b'{"a": 1}', "empty": b""}
    etag = make_client().head_object(Bucket=name, Key="model-00001.safetensors")["ETag"]
    assert etag.strip('"').endswith("-2"), f"a multipart upload's ETag ends with -<parts>: {etag}"


def test_check_bucket_passes_for_an_existing_bucket(bucket: tuple[str, str]) -> None:
    _, name = bucket
    check_bucket(S3Target(f"s3://{name}/x", name, "x"))


# -- failure classes without an object store --------------------------------------------------


class FakeS3:
    """A local HTTP server that answers every request with ``status`` and an S3 error body
    (``code``; no body when it is empty), after ``delay`` seconds; it records the requests and
    their headers."""

    def __init__(self, status: int, code: str, delay: float = 0.0) -> None:
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if delay:
                    time.sleep(delay)
                body = b"" if self.command == "HEAD" or not code else (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>fake {code}</Message><RequestId>1</RequestId></Error>"
                ).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            do_GET = do_PUT = do_POST = do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "adapter_config.json").write_text("{}")
    return model


TARGET = S3Target("s3://models/support-chat/x", "models", "support-chat/x")


@pytest.mark.parametrize(
    "status,code",
    [(503, "SlowDown"), (500, "InternalError"), (502, "BadGateway"), (503, "ServiceUnavailable"), (429, "TooManyRequests")],
)
def test_throttling_and_5xx_are_transient(aws, model_dir: Path, status: int, code: str) -> None:
    server = FakeS3(status, code)
    try:
        aws(server.endpoint, AWS_MAX_ATTEMPTS="2")
        with pytest.raises(TransientError) as raised:
            upload_directory(model_dir, TARGET)
    finally:
        server.close()
    message = str(raised.value)
    assert raised.value.exit_code == 75
    assert f"uploading adapter_config.json to FLYWHEEL_OUTPUT_URI=s3://models/support-chat/x: {code} (HTTP {status})" in message
    assert len(server.requests) == 2, "boto3 retried as AWS_MAX_ATTEMPTS says"
    assert SECRET_KEY not in message


@pytest.mark.parametrize(
    "status,code,hint",
    [
        (403, "AccessDenied", "the credentials may not write there"),
        (403, "InvalidAccessKeyId", "the access key is not known to the store"),
        (403, "SignatureDoesNotMatch", "the secret key does not match the access key"),
        (404, "NoSuchBucket", "the bucket does not exist"),
        (400, "InvalidBucketName", "fake InvalidBucketName"),
    ],
)
def test_refusals_are_bad_configuration(aws, model_dir: Path, status: int, code: str, hint: str) -> None:
    server = FakeS3(status, code)
    try:
        aws(server.endpoint)
        with pytest.raises(ConfigError) as raised:
            upload_directory(model_dir, TARGET)
    finally:
        server.close()
    message = str(raised.value)
    assert raised.value.exit_code == 3
    assert f"FLYWHEEL_OUTPUT_URI=s3://models/support-chat/x: {code} (HTTP {status}): fake {code}" in message and hint in message
    assert SECRET_KEY not in message and ACCESS_KEY not in message


def test_an_unreachable_store_is_transient(aws, model_dir: Path) -> None:
    aws(f"http://127.0.0.1:{free_port()}", AWS_MAX_ATTEMPTS="1")
    with pytest.raises(TransientError, match="uploading adapter_config.json to FLYWHEEL_OUTPUT_URI=s3://models/support-chat/x: EndpointConnectionError") as raised:
        upload_directory(model_dir, TARGET)
    assert raised.value.exit_code == 75
    with pytest.raises(TransientError, match="checking the bucket of FLYWHEEL_OUTPUT_URI=s3://models/support-chat/x: EndpointConnectionError"):
        check_bucket(TARGET)


def test_a_store_that_does_not_answer_times_out_as_transient(aws, model_dir: Path) -> None:
    import boto3
    from botocore.config import Config

    server = FakeS3(200, "", delay=10.0)
    try:
        aws(server.endpoint)
        # boto3's timeouts are 60 s and not read from the environment: this client's are short.
        quick = boto3.session.Session().client("s3", config=Config(read_timeout=0.3, connect_timeout=0.3, retries={"total_max_attempts": 1}))
        started = time.monotonic()
        with pytest.raises(TransientError, match="ReadTimeoutError") as raised:
            upload_directory(model_dir, TARGET, client=quick)
        assert time.monotonic() - started < 5, "the client's timeout applies, not the server's 10 s"
    finally:
        server.close()
    assert raised.value.exit_code == 75
    assert len(server.requests) == 1


def test_the_process_exits_75_before_training_when_the_store_is_unreachable(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]
) -> None:
    dataset, sha = snapshot
    env = contract_env(
        tmp_path, base_model, dataset, sha,
        FLYWHEEL_OUTPUT_URI="s3://models/x", FLYWHEEL_OUTPUT_DIR=str(tmp_path / "output"),
        **aws_env(f"http://127.0.0.1:{free_port()}", tmp_path, AWS_MAX_ATTEMPTS="1"),
    )
    done = run_trainer(env, timeout=600)
    assert done.returncode == 75, done.stderr
    assert "transient failure: checking the bucket of FLYWHEEL_OUTPUT_URI=s3://models/x: EndpointConnectionError" in done.stderr
    assert SECRET_KEY not in done.stdout + done.stderr
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_no_credentials_is_bad_configuration(aws, tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], model_dir: Path) -> None:
    server = FakeS3(200, "")
    try:
        env = aws(server.endpoint)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            del env[name]
            os.environ.pop(name)
        with pytest.raises(ConfigError, match="checking the bucket of FLYWHEEL_OUTPUT_URI=s3://models/support-chat/x: no AWS credentials found"):
            check_bucket(TARGET)
        with pytest.raises(ConfigError, match="uploading adapter_config.json to .*: no AWS credentials found") as raised:
            upload_directory(model_dir, TARGET)
        assert raised.value.exit_code == 3
        assert server.requests == [], "nothing is sent unsigned"

        dataset, sha = snapshot
        contract = contract_env(
            tmp_path / "run", base_model, dataset, sha,
            FLYWHEEL_OUTPUT_URI="s3://models/x", FLYWHEEL_OUTPUT_DIR=str(tmp_path / "output"), **env,
        )
        done = run_trainer(contract, timeout=600)
        assert done.returncode == 3, done.stderr
        assert "bad configuration: checking the bucket of FLYWHEEL_OUTPUT_URI=s3://models/x: no AWS credentials found" in done.stderr
    finally:
        server.close()


def test_a_missing_profile_is_bad_configuration(aws) -> None:
    aws("http://127.0.0.1:9", AWS_PROFILE="no-such-profile")
    with pytest.raises(ConfigError, match="creating the S3 client: The config profile \\(no-such-profile\\) could not be found"):
        check_bucket(TARGET)


def test_a_403_on_the_bucket_check_is_left_to_the_upload(aws, caplog: pytest.LogCaptureFixture) -> None:
    """A credential may be allowed to write objects and not to read the bucket."""
    server = FakeS3(403, "AccessDenied")
    try:
        aws(server.endpoint)
        with caplog.at_level("WARNING", logger="flywheel_trainer"):
            check_bucket(TARGET)
    finally:
        server.close()
    assert "cannot check the bucket of s3://models/support-chat/x (HeadBucket: 403)" in caplog.text
    assert server.requests == ["HEAD /models"]


@pytest.mark.parametrize("setting,sent", [(None, True), ("when_required", False)])
def test_checksum_headers_follow_aws_request_checksum_calculation(aws, model_dir: Path, setting: str | None, sent: bool) -> None:
    """Stores that reject boto3's default checksum headers (some S3-compatible ones) work with
    AWS_REQUEST_CHECKSUM_CALCULATION=when_required, as the README says."""
    server = FakeS3(200, "")
    try:
        extra = {"AWS_REQUEST_CHECKSUM_CALCULATION": setting} if setting else {}
        aws(server.endpoint, **extra)
        upload_directory(model_dir, TARGET)
    finally:
        server.close()
    assert server.requests == ["PUT /models/support-chat/x/adapter_config.json"]
    names = " ".join(server.headers[0])
    assert ("x-amz-checksum-" in names or "x-amz-sdk-checksum-algorithm" in names) == sent, server.headers[0]


# -- units --------------------------------------------------------------------------------------


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"m-{code}"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    "code,status,exit_code",
    [
        ("SlowDown", 503, 75), ("InternalError", 500, 75), ("RequestTimeout", 400, 75), ("Throttling", 400, 75),
        ("RequestTimeTooSkewed", 403, 75), ("Whatever", 504, 75), ("TooManyRequests", 429, 75),
        ("NoSuchBucket", 404, 3), ("AccessDenied", 403, 3), ("InvalidAccessKeyId", 403, 3), ("ExpiredToken", 400, 3),
        ("EntityTooLarge", 400, 3),
    ],
)
def test_client_errors_are_classified(code: str, status: int, exit_code: int) -> None:
    mapped = classify(_client_error(code, status), "uploading x to s3://b/p")
    assert mapped is not None and mapped.exit_code == exit_code
    assert str(mapped).startswith(f"uploading x to s3://b/p: {code} (HTTP {status}): m-{code}")


def test_botocore_errors_are_classified() -> None:
    from botocore.exceptions import (
        ConnectTimeoutError,
        CredentialRetrievalError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    cases = [
        (EndpointConnectionError(endpoint_url="http://h:1"), 75),
        (ReadTimeoutError(endpoint_url="http://h:1"), 75),
        (ConnectTimeoutError(endpoint_url="http://h:1"), 75),
        (CredentialRetrievalError(provider="assume-role-with-web-identity", error_msg="STS unreachable"), 75),
        (NoCredentialsError(), 3),
        (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), 3),
        (ProfileNotFound(profile="p"), 3),
    ]
    for error, code in cases:
        mapped = classify(error, "doing")
        assert mapped is not None and mapped.exit_code == code, error
    assert classify(ValueError("x"), "doing") is None
    assert classify(OSError("disk"), "doing") is None


def test_user_information_in_a_url_is_redacted() -> None:
    assert _redact('Could not connect to "http://key:' + SECRET_KEY + '@minio:9000/b"') == 'Could not connect to "http://***@minio:9000/b"'
    assert _redact("http://minio:9000/b") == "http://minio:9000/b"


def test_an_unusable_endpoint_is_bad_configuration(aws) -> None:
    aws("not a url")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL"):
        make_client()


def test_regular_files_are_listed_sorted_without_symlinks(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "z.txt").write_text("z")
    (tmp_path / "b" / "c" / "y.txt").write_text("y")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    (tmp_path / "dirlink").symlink_to(tmp_path / "b")
    assert [relative for _, relative in regular_files(tmp_path)] == ["a.txt", "b/c/y.txt", "z.txt"]
