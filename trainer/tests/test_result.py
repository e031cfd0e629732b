"""The result line and the exit-code mapping."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from flywheel_trainer.cli import exit_code_for
from flywheel_trainer.contract import VERSION_RE
from flywheel_trainer.errors import ConfigError, DatasetError, Preempted, TrainingFailed, TransientError
from flywheel_trainer.result import MAX_RESULT_BYTES, ResultError, metrics_line, result_line, write_termination_log


def test_the_shape_of_the_contract_example() -> None:
    line = result_line(
        "v1-ft-3f2a9c1b",
        "s3://models/support-chat/v1-ft-3f2a9c1b",
        "adapter",
        {"evalLoss": 1.84, "trainLoss": 1.62, "preferenceAccuracy": 0.71, "trainRows": 480, "evalRows": 52},
    )
    assert "\n" not in line
    assert line.startswith('{"version":"v1-ft-3f2a9c1b","uri":"s3://models/support-chat/v1-ft-3f2a9c1b","artifact":"adapter","metrics":{')
    obj = json.loads(line)
    assert set(obj) == {"version", "uri", "artifact", "metrics"}
    assert obj["version"] == "v1-ft-3f2a9c1b" and obj["uri"] == "s3://models/support-chat/v1-ft-3f2a9c1b"
    assert obj["artifact"] == "adapter"
    assert obj["metrics"] == {"evalLoss": 1.84, "trainLoss": 1.62, "preferenceAccuracy": 0.71, "trainRows": 480, "evalRows": 52}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj["metrics"].values())


def test_floats_are_rounded_to_six_significant_digits() -> None:
    obj = json.loads(result_line("v2", "pvc://models/m", "model", {"evalLoss": 1.234567891234}))
    assert obj["metrics"]["evalLoss"] == 1.23457


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1.0", True, None])
def test_metrics_must_be_finite_numbers(value: object) -> None:
    with pytest.raises(ResultError, match="metric evalLoss"):
        result_line("v2", "pvc://models/m", "model", {"evalLoss": value})


def test_the_version_must_be_a_label() -> None:
    with pytest.raises(ResultError, match="not a valid version label"):
        result_line("V2", "pvc://models/m", "model", {})
    assert VERSION_RE.match("a") and VERSION_RE.match("v1.2_3-x") and not VERSION_RE.match("a-")


@pytest.mark.parametrize("artifact", ["model", "adapter"])
def test_the_artifact_is_recorded(artifact: str) -> None:
    assert json.loads(result_line("v2", "pvc://models/m", artifact, {}))["artifact"] == artifact


@pytest.mark.parametrize("artifact", ["", "merged", "Model", "lora"])
def test_the_artifact_must_be_model_or_adapter(artifact: str) -> None:
    with pytest.raises(ResultError, match=f"artifact {artifact!r} is not one of model, adapter"):
        result_line("v2", "pvc://models/m", artifact, {})


def test_the_uri_must_not_be_empty() -> None:
    with pytest.raises(ResultError, match="uri is empty"):
        result_line("v2", "", "model", {})


def test_the_line_fits_the_kubelet_limit() -> None:
    many = {f"metric{i:04d}": 0.123456 for i in range(300)}
    with pytest.raises(ResultError, match=f"more than the {MAX_RESULT_BYTES}"):
        result_line("v2", "pvc://models/m", "model", many)
    fits = {f"m{i:03d}": 1 for i in range(100)}
    assert len(result_line("v2", "pvc://models/m", "model", fits).encode()) < MAX_RESULT_BYTES


ALL_METRICS = (
    "evalLoss", "evalLossBefore", "preferenceAccuracy", "preferenceAccuracyBefore", "evalDpoLoss", "evalRewardAccuracy",
    "trainLoss", "trainDpoLoss", "trainRows", "evalRows", "steps", "trainTokens", "trainSeconds", "tokensPerSecond",
    "trainableParameters", "skippedRows", "resumedFromStep", "peakGpuMemoryMib",
)


def test_every_metric_with_the_longest_s3_uri_fits() -> None:
    """An S3 key is at most 1024 bytes and a bucket name 63 characters."""
    uri = "s3://" + "b" * 63 + "/" + "/".join(["p" * 99] * 10) + "/v1-ft-3f2a9c1b"[: 1024 - 999]
    metrics = {name: 123456.123456789 for name in ALL_METRICS}
    line = result_line("v" * 63, uri, "adapter", metrics)
    assert len(line.encode()) + 1 < MAX_RESULT_BYTES
    assert json.loads(line)["uri"] == uri


def test_the_termination_log_holds_exactly_one_line(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("stale\nlines\n")
    write_termination_log(path, result_line("v2", "pvc://models/m", "model", {"evalLoss": 1.0}))
    text = path.read_text()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert json.loads(text)["metrics"] == {"evalLoss": 1.0}
    with pytest.raises(TransientError, match="writing the result line"):
        write_termination_log(tmp_path / "no" / "such" / "dir", "{}")


def test_exit_codes() -> None:
    assert exit_code_for(ConfigError("x"))[0] == 3
    assert exit_code_for(DatasetError("x"))[0] == 3
    assert exit_code_for(TransientError("x"))[0] == 75
    assert exit_code_for(Preempted("x"))[0] == 75
    assert exit_code_for(OSError(errno.EIO, "I/O error"))[0] == 75
    assert exit_code_for(ConnectionResetError())[0] == 75
    assert exit_code_for(MemoryError())[0] == 75
    assert exit_code_for(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))[0] == 75
    assert exit_code_for(RuntimeError("DefaultCPUAllocator: can't allocate memory"))[0] == 75
    assert exit_code_for(TrainingFailed("nan"))[0] == 1
    assert exit_code_for(ZeroDivisionError())[0] == 1


def test_torch_out_of_memory_is_transient() -> None:
    import torch

    assert exit_code_for(torch.cuda.OutOfMemoryError("CUDA out of memory"))[0] == 75


def test_the_evaluators_line_is_only_the_metrics() -> None:
    line = metrics_line({"evalLossBefore": 2.3100000001, "evalLoss": 1.84, "evalRows": 52})
    assert line == '{"metrics":{"evalLoss":1.84,"evalLossBefore":2.31,"evalRows":52}}'
    with pytest.raises(ResultError, match="metric evalLoss is not finite"):
        metrics_line({"evalLoss": float("nan")})
    with pytest.raises(ResultError, match="metric evalRows is not a number"):
        metrics_line({"evalRows": True})
    with pytest.raises(ResultError, match="more than the 4096 the kubelet keeps"):
        metrics_line({f"m{i:04d}": 1.0 for i in range(400)})
