"""The environment contract: every bad variable is a ConfigError (exit 3) that names it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import contract_env, run_trainer

from flywheel_trainer.contract import S3Target, default_version, local_path, parse_env
from flywheel_trainer.errors import EXIT_BAD_CONFIG, ConfigError

SHA = "ab" * 32


@pytest.fixture
def good(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> dict[str, str]:
    dataset, sha = snapshot
    return contract_env(tmp_path, base_model, dataset, sha, {"learningRate": "1e-3"})


def test_a_full_environment_parses(good: dict[str, str], base_model: Path, snapshot: tuple[Path, str], tmp_path: Path) -> None:
    config = parse_env(good)
    assert config.dataset.local_dir == snapshot[0]
    assert config.dataset_sha256 == snapshot[1]
    assert config.formats == ("SFT", "DPO")
    assert config.base_model_dir == base_model
    assert config.output_dir == tmp_path / "out"
    assert config.version == f"v1-ft-{snapshot[1][:8]}"
    assert config.hyperparameters.learningRate == 1e-3
    assert config.checkpoint_dir == tmp_path / "checkpoints"
    assert config.attempt == 1
    assert config.termination_log == tmp_path / "termination-log"


def test_defaults_of_optional_variables(good: dict[str, str]) -> None:
    for name in ("FLYWHEEL_CHECKPOINT_DIR", "FLYWHEEL_TERMINATION_LOG", "FLYWHEEL_ATTEMPT", "FLYWHEEL_RETRAINJOB"):
        del good[name]
    config = parse_env(good)
    assert config.checkpoint_dir is None
    assert config.termination_log == Path("/dev/termination-log")
    assert config.attempt == 1
    assert config.retrain_job is None


def test_an_explicit_version_wins_and_base_version_is_then_optional(good: dict[str, str]) -> None:
    del good["FLYWHEEL_BASE_VERSION"]
    good["FLYWHEEL_VERSION"] = "v7.1-canary"
    assert parse_env(good).version == "v7.1-canary"


def test_formats_are_normalized(good: dict[str, str]) -> None:
    good["FLYWHEEL_DATASET_FORMATS"] = " dpo , SFT "
    assert parse_env(good).formats == ("SFT", "DPO")
    good["FLYWHEEL_DATASET_FORMATS"] = "DPO"
    assert parse_env(good).formats == ("DPO",)


def test_uris() -> None:
    assert local_path("X", "file:///a/b%20c") == Path("/a/b c")
    assert local_path("X", "relative/dir") == Path("relative/dir")
    assert default_version("v1", SHA) == "v1-ft-abababab"


BAD = [
    ("FLYWHEEL_DATASET_URI", None, "FLYWHEEL_DATASET_URI is not set"),
    ("FLYWHEEL_DATASET_URI", "s3://bucket/snap", "unsupported URI scheme s3://"),
    ("FLYWHEEL_DATASET_URI", "https:///nohost", "the https:// URL has no host"),
    ("FLYWHEEL_DATASET_URI", "http:///nohost", "the http:// URL has no host"),
    ("FLYWHEEL_DATASET_URI", "http://collector/v1/datasets/ds-1/files?x=1", "must not have a query or fragment"),
    ("FLYWHEEL_DATASET_URI", "https://collector/v1/datasets/ds-1/files#f", "must not have a query or fragment"),
    ("FLYWHEEL_DATASET_URI", "file://otherhost/x", "must not name a host"),
    ("FLYWHEEL_DATASET_SHA256", None, "FLYWHEEL_DATASET_SHA256 is not set"),
    ("FLYWHEEL_DATASET_SHA256", "abc123", "is not 64 hexadecimal digits"),
    ("FLYWHEEL_DATASET_FORMATS", None, "FLYWHEEL_DATASET_FORMATS is not set"),
    ("FLYWHEEL_DATASET_FORMATS", "SFT,KTO", "unknown format 'KTO'"),
    ("FLYWHEEL_DATASET_FORMATS", "SFT,SFT", "names a format twice"),
    ("FLYWHEEL_BASE_MODEL_URI", None, "FLYWHEEL_BASE_MODEL_URI is not set"),
    ("FLYWHEEL_BASE_MODEL_URI", "hf://meta/llama", "unsupported URI scheme hf://"),
    ("FLYWHEEL_BASE_MODEL_URI", "/nonexistent/model", "is not a directory"),
    ("FLYWHEEL_BASE_VERSION", None, "FLYWHEEL_BASE_VERSION is not set"),
    ("FLYWHEEL_BASE_VERSION", "V1_Upper", "is not a valid version label"),
    ("FLYWHEEL_VERSION", "-bad-", "is not a valid version label"),
    ("FLYWHEEL_VERSION", "v" * 64, "is not a valid version label"),
    ("FLYWHEEL_OUTPUT_URI", None, "FLYWHEEL_OUTPUT_URI is not set"),
    ("FLYWHEEL_OUTPUT_URI", "s3://models/x", "FLYWHEEL_OUTPUT_DIR is not set (with FLYWHEEL_OUTPUT_URI='s3://models/x'"),
    ("FLYWHEEL_OUTPUT_URI", "/var/run/flywheel/output-claim/x", "serving cannot load a path of the trainer's pod"),
    ("FLYWHEEL_ATTEMPT", "0", "FLYWHEEL_ATTEMPT='0' is not a positive integer"),
    ("FLYWHEEL_ATTEMPT", "two", "is not a positive integer"),
    ("FLYWHEEL_CHECKPOINT_DIR", "gs://bucket/ckpt", "unsupported URI scheme gs://"),
    ("FLYWHEEL_HYPERPARAMETERS", "not json", "FLYWHEEL_HYPERPARAMETERS is not valid JSON"),
    ("FLYWHEEL_HYPERPARAMETERS", '["a"]', "must be a JSON object of strings"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"epochs": 3}', "the value of 'epochs' must be a string"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"learningRate": "-1"}', "learningRate=-1 is out of range (0, 1]"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"learningrate": "1e-4"}', "unknown hyperparameter 'learningrate' (did you mean learningRate?)"),
]


@pytest.mark.parametrize("name,value,message", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_each_bad_variable_is_a_config_error(good: dict[str, str], name: str, value: str | None, message: str) -> None:
    if value is None:
        good.pop(name, None)
        if name == "FLYWHEEL_BASE_VERSION":
            good.pop("FLYWHEEL_VERSION", None)
    else:
        good[name] = value
    with pytest.raises(ConfigError) as raised:
        parse_env(good)
    assert message in str(raised.value)
    assert raised.value.exit_code == EXIT_BAD_CONFIG


# -- FLYWHEEL_OUTPUT_URI and FLYWHEEL_OUTPUT_DIR ---------------------------------------------


def test_a_file_output_without_output_dir_is_written_where_it_points(good: dict[str, str], tmp_path: Path) -> None:
    config = parse_env(good)
    assert "FLYWHEEL_OUTPUT_DIR" not in good
    assert config.output_uri == f"file://{tmp_path / 'out'}" and config.output_dir == tmp_path / "out"
    assert config.output_s3 is None


def test_a_pvc_output_is_written_to_output_dir_and_reported_as_the_uri(good: dict[str, str], tmp_path: Path) -> None:
    good["FLYWHEEL_OUTPUT_URI"] = "pvc://models/support-chat/x"
    good["FLYWHEEL_OUTPUT_DIR"] = str(tmp_path / "output-claim" / "support-chat" / "x")
    config = parse_env(good)
    assert config.output_uri == "pvc://models/support-chat/x"
    assert config.output_dir == tmp_path / "output-claim" / "support-chat" / "x"
    assert config.output_s3 is None


@pytest.mark.parametrize(
    "uri,bucket,prefix,key",
    [
        ("s3://models/support-chat/x", "models", "support-chat/x", "support-chat/x/adapter/adapter_config.json"),
        ("s3://models/support-chat/x/", "models", "support-chat/x", "support-chat/x/adapter/adapter_config.json"),
        ("S3://my.models-2/a%20b", "my.models-2", "a b", "a b/adapter/adapter_config.json"),
        ("s3://models", "models", "", "adapter/adapter_config.json"),
    ],
)
def test_an_s3_output_is_written_to_output_dir_then_uploaded(good: dict[str, str], tmp_path: Path, uri: str, bucket: str, prefix: str, key: str) -> None:
    good["FLYWHEEL_OUTPUT_URI"] = uri
    good["FLYWHEEL_OUTPUT_DIR"] = f"file://{tmp_path / 'output'}"
    config = parse_env(good)
    assert config.output_uri == uri and config.output_dir == tmp_path / "output"
    assert config.output_s3 == S3Target(uri=uri, bucket=bucket, prefix=prefix)
    assert config.output_s3.key("adapter/adapter_config.json") == key


BAD_OUTPUTS = [
    # The defect: a mounted path of the trainer's pod reported as the model's URI.
    ("/var/run/flywheel/output-claim/support-chat/x", None, "FLYWHEEL_OUTPUT_URI='/var/run/flywheel/output-claim/support-chat/x' is a local path, and serving cannot load a path of the trainer's pod"),
    ("/var/run/flywheel/output-claim/support-chat/x", "/var/run/flywheel/output-claim/support-chat/x", "serving cannot load a path of the trainer's pod"),
    ("relative/out", None, "serving cannot load a path of the trainer's pod"),
    ("pvc://models/support-chat/x", None, "FLYWHEEL_OUTPUT_DIR is not set (with FLYWHEEL_OUTPUT_URI='pvc://models/support-chat/x' it must name the local directory"),
    ("s3://models/x", None, "FLYWHEEL_OUTPUT_DIR is not set"),
    ("gs://models/x", "DIR", "FLYWHEEL_OUTPUT_URI='gs://models/x': unsupported URI scheme gs:// (supported: pvc://<claim>/<path>, s3://<bucket>/<prefix>, or file:///<path> without FLYWHEEL_OUTPUT_DIR); for Google Cloud Storage use s3://<bucket>/<prefix> with its S3-compatible XML API: HMAC keys"),
    ("hf://org/model", "DIR", "FLYWHEEL_OUTPUT_URI='hf://org/model': unsupported URI scheme hf:// (supported: pvc://"),
    ("https://models.example.com/x", "DIR", "unsupported URI scheme https:// (supported: pvc://"),
    ("http://models/x", None, "unsupported URI scheme http:// (supported: pvc://"),
    ("ftp://models/x", "DIR", "unsupported URI scheme ftp://"),
    ("file:///models/x", "DIR", "FLYWHEEL_OUTPUT_URI='file:///models/x' with FLYWHEEL_OUTPUT_DIR="),
    ("file://otherhost/models/x", None, "must not name a host"),
    ("pvc://Models/x", "DIR", "FLYWHEEL_OUTPUT_URI='pvc://Models/x': 'Models' is not a PersistentVolumeClaim name"),
    ("pvc:///x", "DIR", "'' is not a PersistentVolumeClaim name"),
    ("pvc://models/a/../b", "DIR", "the path must not have '.' or '..' parts"),
    ("s3://ab/x", "DIR", "FLYWHEEL_OUTPUT_URI='s3://ab/x': 'ab' is not a bucket name"),
    ("s3://My_Models/x", "DIR", "'My_Models' is not a bucket name"),
    ("s3://key:secret@models/x", "DIR", "is not a bucket name"),
    ("s3://models/./x", "DIR", "the path must not have '.' or '..' parts"),
    ("s3://models/x?versionId=3", "DIR", "the URI must not have a query or fragment"),
    ("pvc://models/x#y", "DIR", "the URI must not have a query or fragment"),
    ("pvc://models/x", "gs://bucket/x", "FLYWHEEL_OUTPUT_DIR='gs://bucket/x': unsupported URI scheme gs://"),
    ("s3://models/x", "FILE", "FLYWHEEL_OUTPUT_DIR="),
]


@pytest.mark.parametrize("uri,directory,message", BAD_OUTPUTS, ids=[f"{u}|{d}" for u, d, _ in BAD_OUTPUTS])
def test_each_bad_output_is_a_config_error(good: dict[str, str], tmp_path: Path, uri: str, directory: str | None, message: str) -> None:
    good["FLYWHEEL_OUTPUT_URI"] = uri
    if directory == "DIR":
        directory = str(tmp_path / "output")
    elif directory == "FILE":
        (tmp_path / "a-file").write_text("x")
        directory = str(tmp_path / "a-file")
        message += f"{directory!r}: {directory} exists and is not a directory"
    if directory is not None:
        good["FLYWHEEL_OUTPUT_DIR"] = directory
    with pytest.raises(ConfigError) as raised:
        parse_env(good)
    assert message in str(raised.value)
    assert raised.value.exit_code == EXIT_BAD_CONFIG


def test_a_local_path_is_refused_naming_both_variables(good: dict[str, str]) -> None:
    good["FLYWHEEL_OUTPUT_URI"] = "/var/run/flywheel/output-claim/support-chat/x"
    with pytest.raises(ConfigError) as raised:
        parse_env(good)
    text = str(raised.value)
    assert "FLYWHEEL_OUTPUT_URI" in text and "FLYWHEEL_OUTPUT_DIR" in text


def test_the_process_exits_3_on_a_local_path_as_the_output_uri(good: dict[str, str]) -> None:
    """What the operator used to pass: the trainer must not report a pod-local path to serving."""
    good["FLYWHEEL_OUTPUT_URI"] = "/var/run/flywheel/output-claim/support-chat/x"
    done = run_trainer(good, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "bad configuration: FLYWHEEL_OUTPUT_URI='/var/run/flywheel/output-claim/support-chat/x' is a local path" in done.stderr
    assert not Path(good["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_a_base_model_without_config_json(good: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    good["FLYWHEEL_BASE_MODEL_URI"] = f"file://{empty}"
    with pytest.raises(ConfigError, match="has no config.json"):
        parse_env(good)


def test_the_process_exits_3_with_the_message(good: dict[str, str]) -> None:
    good["FLYWHEEL_HYPERPARAMETERS"] = '{"loraRank": "0"}'
    done = run_trainer(good, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "bad configuration: hyperparameter loraRank=0 is out of range [1, 1024]" in done.stderr
    assert not Path(good["FLYWHEEL_TERMINATION_LOG"]).exists()


# -- http(s):// datasets and FLYWHEEL_DATASET_TOKEN_FILE ------------------------------------

TOKEN = "tok-5f1d.e9/A+b=="
COLLECTOR = "http://flywheel-collector.flywheel-system.svc:8080/v1/datasets/ds-42/files"


@pytest.mark.parametrize("uri", [COLLECTOR, COLLECTOR + "/", "https://collector.example.com/v1/datasets/ds-42/files"])
def test_http_and_https_dataset_uris_are_accepted(good: dict[str, str], uri: str) -> None:
    good["FLYWHEEL_DATASET_URI"] = uri
    dataset = parse_env(good).dataset
    assert dataset.http_base == uri.rstrip("/")
    assert dataset.local_dir is None and dataset.token is None and dataset.token_file is None


def test_the_token_file_is_read_stripped_and_kept_out_of_repr(good: dict[str, str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\r\n\n")
    good["FLYWHEEL_DATASET_URI"] = COLLECTOR
    good["FLYWHEEL_DATASET_TOKEN_FILE"] = str(token_file)
    config = parse_env(good)
    assert config.dataset.token == TOKEN
    assert config.dataset.token_file == token_file
    assert TOKEN not in repr(config) and TOKEN not in config.dataset.describe()
    assert f"bearer token from FLYWHEEL_DATASET_TOKEN_FILE={token_file}" in config.dataset.describe()


def test_a_token_file_with_a_local_dataset_is_allowed_and_not_read(good: dict[str, str], tmp_path: Path) -> None:
    good["FLYWHEEL_DATASET_TOKEN_FILE"] = str(tmp_path / "no-such-token")
    config = parse_env(good)
    assert config.dataset.local_dir is not None and config.dataset.token is None


TOKEN_FILE_PROBLEMS = [
    ("missing", None, "does not exist"),
    ("empty", b"", "is empty (it must hold the bearer token)"),
    ("only-a-newline", b" \n\n", "is empty"),
    ("a-directory", "dir", "is a directory, not a file"),
    ("two-words", b"secret-part-one secret-part-two\n", "does not hold a single bearer token"),
    ("inner-newline", b"secret-line-one\nsecret-line-two\n", "does not hold a single bearer token"),
    ("not-ascii", "secret-\u00e9t\u00e9".encode(), "is not an ASCII bearer token"),
]


@pytest.mark.parametrize("case,content,message", TOKEN_FILE_PROBLEMS, ids=[c for c, _, _ in TOKEN_FILE_PROBLEMS])
def test_a_bad_token_file_is_a_config_error_naming_it(good: dict[str, str], tmp_path: Path, case: str, content: bytes | str | None, message: str) -> None:
    token_file = tmp_path / "token"
    if content == "dir":
        token_file.mkdir()
    elif content is not None:
        token_file.write_bytes(content)
    good["FLYWHEEL_DATASET_URI"] = COLLECTOR
    good["FLYWHEEL_DATASET_TOKEN_FILE"] = str(token_file)
    with pytest.raises(ConfigError) as raised:
        parse_env(good)
    text = str(raised.value)
    assert raised.value.exit_code == EXIT_BAD_CONFIG
    assert f"FLYWHEEL_DATASET_TOKEN_FILE={str(token_file)!r}" in text and message in text
    assert "secret" not in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_token_file_is_a_config_error(good: dict[str, str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("secret-token")
    token_file.chmod(0)
    good["FLYWHEEL_DATASET_URI"] = COLLECTOR
    good["FLYWHEEL_DATASET_TOKEN_FILE"] = str(token_file)
    try:
        with pytest.raises(ConfigError, match="FLYWHEEL_DATASET_TOKEN_FILE=.*: cannot read .*Permission denied"):
            parse_env(good)
    finally:
        token_file.chmod(0o600)


@pytest.mark.parametrize("content", [None, b"\n"], ids=["missing", "empty"])
def test_the_process_exits_3_on_a_bad_token_file(good: dict[str, str], tmp_path: Path, content: bytes | None) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_bytes(content)
    good["FLYWHEEL_DATASET_URI"] = COLLECTOR
    good["FLYWHEEL_DATASET_TOKEN_FILE"] = str(token_file)
    done = run_trainer(good, timeout=600)
    assert done.returncode == 3, done.stderr
    assert f"bad configuration: FLYWHEEL_DATASET_TOKEN_FILE={str(token_file)!r}: {token_file}" in done.stderr
    assert not Path(good["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_the_process_never_prints_a_malformed_token(good: dict[str, str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("secret-part-one secret-part-two\n")
    good["FLYWHEEL_DATASET_URI"] = COLLECTOR
    good["FLYWHEEL_DATASET_TOKEN_FILE"] = str(token_file)
    done = run_trainer(good, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "does not hold a single bearer token" in done.stderr
    assert "secret-part" not in done.stdout + done.stderr
