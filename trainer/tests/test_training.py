"""Training in-process: the step plan, the losses, and checkpoint resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import contract_env
from safetensors.torch import load_file

from flywheel_trainer.checkpoint import CheckpointStore
from flywheel_trainer.cli import run
from flywheel_trainer.errors import Preempted
from flywheel_trainer.hyperparameters import parse_hyperparameters
from flywheel_trainer.training import Encoded, Plan, dpo_loss, learning_rate, make_plan


def test_the_plan_is_a_pure_function_of_seed_and_step() -> None:
    plan = Plan(n_sft=10, n_dpo=5, batch_size=4, seed=1, total_steps=12)
    assert plan.batches_per_epoch == 3 + 2
    steps = list(plan.steps_from(0))
    assert [s for s, _, _ in steps] == list(range(12))
    assert list(plan.steps_from(7)) == steps[7:]
    # each epoch covers every row of each kind exactly once
    first_epoch = steps[:5]
    assert sorted(i for _, k, rows in first_epoch if k == "sft" for i in rows) == list(range(10))
    assert sorted(i for _, k, rows in first_epoch if k == "dpo" for i in rows) == list(range(5))
    assert steps[:5] != steps[5:10]  # epochs are shuffled differently
    assert list(Plan(10, 5, 4, 2, 12).steps_from(0)) != steps


def test_max_steps_overrides_epochs_and_weights_drop_a_kind() -> None:
    enc = Encoded(sft_train=[None] * 10, dpo_train=[None] * 6)  # type: ignore[list-item]
    assert make_plan(enc, parse_hyperparameters({"batchSize": "4", "epochs": "2"})).total_steps == 2 * (3 + 2)
    assert make_plan(enc, parse_hyperparameters({"batchSize": "4", "maxSteps": "17"})).total_steps == 17
    only_sft = make_plan(enc, parse_hyperparameters({"batchSize": "4", "dpoWeight": "0"}))
    assert only_sft.n_dpo == 0 and only_sft.total_steps == 3


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    hp = parse_hyperparameters({"learningRate": "0.1", "warmupRatio": "0.1"})
    lrs = [learning_rate(hp, s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1 / 90)


def test_dpo_loss() -> None:
    zero = torch.zeros(3)
    loss, margin = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert float(loss) == pytest.approx(math.log(2))
    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert float(margin[0]) == pytest.approx(0.5 * (1 - (-3)))
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))))


class StopAt:
    """A should_stop callback that asks to stop on its n-th call (one call per step)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.n is not None and self.calls >= self.n


HP = {"learningRate": "5e-3", "maxSteps": "12", "batchSize": "4", "checkpointEvery": "4", "loraDropout": "0.1", "seed": "3", "logEvery": "100"}


def _adapter(env: dict[str, str]) -> dict[str, torch.Tensor]:
    return load_file(str(Path(env["FLYWHEEL_OUTPUT_URI"].removeprefix("file://")) / "adapter_model.safetensors"))


def test_an_interrupted_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]
) -> None:
    dataset, sha = snapshot
    straight_env = contract_env(tmp_path / "a", base_model, dataset, sha, HP)
    straight = run(straight_env, StopAt(None))
    assert straight["metrics"]["steps"] == 12 and "resumedFromStep" not in straight["metrics"]

    env = contract_env(tmp_path / "b", base_model, dataset, sha, HP)
    with pytest.raises(Preempted, match="stopped at step 6 of 12; checkpoint saved"):
        run(env, StopAt(7))
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()
    run_dirs = list(Path(env["FLYWHEEL_CHECKPOINT_DIR"]).iterdir())
    assert len(run_dirs) == 1
    assert sorted(p.name for p in run_dirs[0].iterdir()) == ["step-00000004", "step-00000006"]

    counter = StopAt(None)
    resumed = run(env, counter)
    assert counter.calls == 6 + 1, "the second attempt ran only the 6 remaining steps"
    assert resumed["metrics"]["resumedFromStep"] == 6
    assert resumed["metrics"]["steps"] == 12
    assert json.loads(Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text()) == resumed

    # Same batches, same dropout masks, same optimizer state: the same adapter, bit for bit.
    a, b = _adapter(straight_env), _adapter(env)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for key in ("evalLoss", "evalLossBefore", "trainLoss", "trainDpoLoss", "preferenceAccuracy", "trainTokens"):
        assert resumed["metrics"][key] == straight["metrics"][key], key

    # A retry after training completed (say the upload failed) does not train again.
    counter = StopAt(None)
    again = run(env, counter)
    assert counter.calls == 1 and again["metrics"]["resumedFromStep"] == 12
    assert again["metrics"]["evalLoss"] == straight["metrics"]["evalLoss"]


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    env = contract_env(tmp_path, base_model, dataset, sha, HP)
    with pytest.raises(Preempted):
        run(env, StopAt(6))
    other = contract_env(tmp_path, base_model, dataset, sha, {**HP, "seed": "4"})
    result = run(other, StopAt(None))
    assert "resumedFromStep" not in result["metrics"]
    assert len(list(Path(env["FLYWHEEL_CHECKPOINT_DIR"]).iterdir())) == 2


def test_an_unreadable_checkpoint_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "f" * 64)
    weights = {"w": torch.ones(2)}
    opt = {"state": {}, "param_groups": []}
    store.save(4, weights, opt, {"cpu": torch.get_rng_state()}, {"x": 1})
    store.save(8, weights, opt, {"cpu": torch.get_rng_state()}, {"x": 2})
    store.save(12, weights, opt, {"cpu": torch.get_rng_state()}, {"x": 3})
    assert store.steps() == [12, 8]
    (store.dir / "step-00000012" / "adapter.safetensors").write_bytes(b"garbage")
    latest = store.load_latest()
    assert latest is not None and latest.step == 8 and latest.state["x"] == 2


def test_dpo_only_with_the_fallback_template(tmp_path: Path, base_model_no_template: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    env = contract_env(
        tmp_path, base_model_no_template, dataset, sha, {"maxSteps": "6", "batchSize": "8", "learningRate": "1e-2"},
        FLYWHEEL_DATASET_FORMATS="DPO", FLYWHEEL_VERSION="custom-1",
    )
    del env["FLYWHEEL_CHECKPOINT_DIR"]
    result = run(env)
    m = result["metrics"]
    assert result["version"] == "custom-1"
    assert "trainLoss" not in m and m["trainDpoLoss"] > 0
    assert 0 <= m["preferenceAccuracy"] <= 1 and 0 <= m["evalRewardAccuracy"] <= 1 and m["evalDpoLoss"] > 0
    assert m["trainRows"] == sum(1 for _ in open(dataset / "dpo.jsonl"))
    assert m["evalRows"] == sum(1 for _ in open(dataset / "dpo.heldout.jsonl"))


def test_a_base_model_directory_without_weights_is_bad_configuration(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    from flywheel_trainer.errors import ConfigError

    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((base_model / name).read_bytes())
    dataset, sha = snapshot
    with pytest.raises(ConfigError, match="FLYWHEEL_BASE_MODEL_URI: cannot load the base model from"):
        run(contract_env(tmp_path, broken, dataset, sha, {"maxSteps": "1"}))


def test_a_snapshot_with_nothing_to_train_on_is_refused(tmp_path: Path, base_model: Path) -> None:
    from flywheel_trainer.dataset import write_snapshot
    from flywheel_trainer.errors import DatasetError

    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "the"}], "rejected": [{"role": "assistant", "content": "is"}]}
    sha = write_snapshot(tmp_path / "ds", [], [], [row], [])
    env = contract_env(tmp_path, base_model, tmp_path / "ds", sha, FLYWHEEL_DATASET_FORMATS="SFT")
    with pytest.raises(DatasetError, match="no training rows of the formats SFT"):
        run(env)
