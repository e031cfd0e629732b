"""Shared fixtures: a tiny random base model and synthetic snapshots, all built in tmp dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRAINER_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINER_ROOT))

from flywheel_trainer import synthetic  # noqa: E402

N_ITEMS = 24


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama-style model (hidden 64) with random weights and a chat-template tokenizer."""
    return synthetic.write_base_model(tmp_path_factory.mktemp("base") / "model", n_items=N_ITEMS, hidden=64, layers=2, heads=4)


@pytest.fixture(scope="session")
def base_model_no_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.write_base_model(
        tmp_path_factory.mktemp("base-plain") / "model", n_items=N_ITEMS, chat_template=False, hidden=32, layers=2, heads=4
    )


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("snapshot") / "ds"
    sha = synthetic.write_feedback_snapshot(directory, n_items=N_ITEMS)
    return directory, sha


def contract_env(tmp_path: Path, base: Path, dataset: Path, sha: str, hyperparameters: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The variables the RetrainJob controller sets, pointing at tmp paths."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {
        "FLYWHEEL_DATASET_URI": f"file://{dataset}",
        "FLYWHEEL_DATASET_SHA256": sha,
        "FLYWHEEL_DATASET_FORMATS": "SFT,DPO",
        "FLYWHEEL_BASE_MODEL_URI": str(base),
        "FLYWHEEL_BASE_VERSION": "v1",
        "FLYWHEEL_OUTPUT_URI": f"file://{tmp_path / 'out'}",
        "FLYWHEEL_HYPERPARAMETERS": json.dumps(hyperparameters or {}),
        "FLYWHEEL_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "FLYWHEEL_RETRAINJOB": "support-chat-1",
        "FLYWHEEL_NAMESPACE": "default",
        "FLYWHEEL_ATTEMPT": "1",
        "FLYWHEEL_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    for name, value in (hyperparameters or {}).items():
        env["FLYWHEEL_HP_" + "".join(c if c.isalnum() else "_" for c in name).upper()] = value
    env.update(extra)
    return env


def subprocess_env(contract: dict[str, str]) -> dict[str, str]:
    """The test's own environment with the contract's variables; no FLYWHEEL_* or AWS_* variable
    of the machine running the tests leaks in (a test never reaches a real object store)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "AWS_"))}
    env.update(contract)
    env["PYTHONPATH"] = str(TRAINER_ROOT)
    env["HF_HUB_OFFLINE"] = "1"
    return env


# A guard against a hung trainer, not a performance check: generous, because CI machines have two
# cores and a test may share them with others.
def run_trainer(contract: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flywheel_trainer"],
        env=subprocess_env(contract),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def eval_env(tmp_path: Path, base: Path, dataset: Path, sha: str, candidate: Path, artifact: str, hyperparameters: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The variables the operator's evaluation Job sets, pointing at tmp paths."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {
        "FLYWHEEL_DATASET_URI": f"file://{dataset}",
        "FLYWHEEL_DATASET_SHA256": sha,
        "FLYWHEEL_DATASET_FORMATS": "SFT,DPO",
        "FLYWHEEL_BASE_MODEL_URI": str(base),
        "FLYWHEEL_BASE_VERSION": "v1",
        "FLYWHEEL_CANDIDATE_DIR": str(candidate),
        "FLYWHEEL_CANDIDATE_ARTIFACT": artifact,
        "FLYWHEEL_CANDIDATE_VERSION": f"v1-ft-{sha[:8]}",
        "FLYWHEEL_HYPERPARAMETERS": json.dumps(hyperparameters or {}),
        "FLYWHEEL_TERMINATION_LOG": str(tmp_path / "evaluation-log"),
    }
    for name, value in (hyperparameters or {}).items():
        env["FLYWHEEL_HP_" + "".join(c if c.isalnum() else "_" for c in name).upper()] = value
    env.update(extra)
    return env


def run_evaluator(env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flywheel_trainer.evaluate"],
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
