"""The result line: one JSON object on the termination log, at most 4096 bytes.

The trainer's is ``{"version":...,"uri":...,"artifact":...,"metrics":{...}}``; the evaluator's is
``{"metrics":{...}}``. Both are compact JSON with the metrics sorted by name, floats to 6
significant digits, and are written the same way."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from .contract import ARTIFACTS, VERSION_RE
from .errors import TrainerError, TransientError

MAX_RESULT_BYTES = 4096


class ResultError(TrainerError):
    """The result line cannot be built (a bug: the metrics are the trainer's own)."""

    kind = "malformed result"


def _number(name: str, value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultError(f"metric {name} is not a number: {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ResultError(f"metric {name} is not finite: {value}")
        return float(f"{value:.6g}")
    return value


def result_line(version: str, uri: str, artifact: str, metrics: Mapping[str, object]) -> str:
    """``{"version":...,"uri":...,"artifact":...,"metrics":{...}}`` in compact JSON, without a
    newline. ``artifact`` is ``model`` (a whole model at the URI's top level) or ``adapter`` (a
    PEFT LoRA adapter there)."""
    if not VERSION_RE.match(version):
        raise ResultError(f"version {version!r} is not a valid version label")
    if not uri:
        raise ResultError("the result's uri is empty")
    if artifact not in ARTIFACTS:
        raise ResultError(f"artifact {artifact!r} is not one of {', '.join(ARTIFACTS)}")
    body = {"version": version, "uri": uri, "artifact": artifact, "metrics": _metrics(metrics)}
    return _line(body)


def metrics_line(metrics: Mapping[str, object]) -> str:
    """The evaluator's result: ``{"metrics":{...}}`` in compact JSON, without a newline."""
    return _line({"metrics": _metrics(metrics)})


def _metrics(metrics: Mapping[str, object]) -> dict[str, int | float]:
    return {k: _number(k, v) for k, v in sorted(metrics.items())}


def _line(body: dict[str, object]) -> str:
    line = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(line.encode()) + 1
    if size > MAX_RESULT_BYTES:
        raise ResultError(f"the result line is {size} bytes, more than the {MAX_RESULT_BYTES} the kubelet keeps")
    return line


def write_termination_log(path: Path, line: str) -> None:
    """Write the line (and a newline) to the termination log, replacing what was there."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        raise TransientError(f"writing the result line to {path}: {e}") from e
