"""The environment contract: every bad variable is a ConfigError (exit 3) that names it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import contract_env, run_trainer

from flywheel_trainer.contract import default_version, local_path, parse_env
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
    ("FLYWHEEL_DATASET_URI", "http://example.com/snap", "plain http:// is not supported"),
    ("FLYWHEEL_DATASET_URI", "https:///nohost", "has no host"),
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
    ("FLYWHEEL_OUTPUT_URI", "s3://models/x", "unsupported URI scheme s3://"),
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


def test_a_base_model_without_config_json(good: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    good["FLYWHEEL_BASE_MODEL_URI"] = f"file://{empty}"
    with pytest.raises(ConfigError, match="has no config.json"):
        parse_env(good)


def test_the_process_exits_3_with_the_message(good: dict[str, str]) -> None:
    good["FLYWHEEL_HYPERPARAMETERS"] = '{"loraRank": "0"}'
    done = run_trainer(good, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "bad configuration: hyperparameter loraRank=0 is out of range [1, 1024]" in done.stderr
    assert not Path(good["FLYWHEEL_TERMINATION_LOG"]).exists()
