from __future__ import annotations

import pytest

from flywheel_trainer.errors import ConfigError
from flywheel_trainer.hyperparameters import EVALUATION_NAMES, SPECS, Hyperparameters, env_name, hyperparameters_from_env, markdown_table, parse_hyperparameters


def test_defaults() -> None:
    hp = parse_hyperparameters({})
    assert hp == Hyperparameters()
    assert hp.lora_alpha == 2 * hp.loraRank
    assert hp.target_modules == "all-linear"
    assert hp.mergeAdapter is False


def test_every_field_has_a_spec_and_the_other_way_round() -> None:
    assert set(SPECS) == set(Hyperparameters().as_dict())


def test_values_are_parsed() -> None:
    hp = parse_hyperparameters(
        {
            "learningRate": "2e-4", "epochs": "3", "maxSteps": "50", "batchSize": "16", "loraRank": "8",
            "loraAlpha": "4", "loraDropout": "0", "maxSeqLen": "256", "dpoBeta": "0.5", "seed": "7",
            "mergeAdapter": "True", "checkpointEvery": "25", "targetModules": "q_proj, v_proj", "precision": "BF16",
            "method": "lora",
        }
    )
    assert (hp.learningRate, hp.epochs, hp.maxSteps, hp.batchSize) == (2e-4, 3, 50, 16)
    assert (hp.loraRank, hp.lora_alpha, hp.loraDropout, hp.maxSeqLen, hp.dpoBeta, hp.seed) == (8, 4.0, 0.0, 256, 0.5, 7)
    assert hp.mergeAdapter is True and hp.checkpointEvery == 25 and hp.precision == "bf16"
    assert hp.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("learningRate", "0", "learningRate=0 is out of range (0, 1]"),
        ("learningRate", "fast", "learningRate='fast' is not a number"),
        ("learningRate", "nan", "is out of range"),
        ("epochs", "1.5", "epochs='1.5' is not an integer"),
        ("epochs", "0", "epochs=0 is out of range [1, 1000]"),
        ("batchSize", "5000", "batchSize=5000 is out of range [1, 4096]"),
        ("loraDropout", "1", "loraDropout=1 is out of range [0, 1)"),
        ("maxSeqLen", "4", "maxSeqLen=4 is out of range [8, 131072]"),
        ("dpoBeta", "0", "dpoBeta=0 is out of range (0, 100]"),
        ("seed", "-1", "seed=-1 is out of range"),
        ("mergeAdapter", "maybe", "mergeAdapter='maybe' is not a boolean"),
        ("method", "full", "method='full' must be one of lora"),
        ("precision", "fp8", "must be one of auto, bf16, fp32"),
        ("targetModules", "q_proj;rm -rf", "must be all-linear or a comma-separated list"),
        ("warmupRatio", "0.9", "warmupRatio=0.9 is out of range [0, 0.5]"),
    ],
)
def test_out_of_range_or_malformed(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_hyperparameters({name: value})
    assert message in str(raised.value)


def test_env_names() -> None:
    assert env_name("learningRate") == "FLYWHEEL_HP_LEARNINGRATE"
    assert env_name("lora-rank.x") == "FLYWHEEL_HP_LORA_RANK_X"


def test_the_json_object_wins_over_the_per_name_variables() -> None:
    hp, raw = hyperparameters_from_env(
        {"FLYWHEEL_HYPERPARAMETERS": '{"epochs": "2"}', "FLYWHEEL_HP_EPOCHS": "9", "FLYWHEEL_HP_SEED": "5"}
    )
    assert hp.epochs == 2 and hp.seed == Hyperparameters().seed
    assert raw == {"epochs": "2"}


def test_per_name_variables_alone() -> None:
    hp, raw = hyperparameters_from_env({"FLYWHEEL_HP_LEARNINGRATE": "0.01", "FLYWHEEL_HP_MERGEADAPTER": "true"})
    assert hp.learningRate == 0.01 and hp.mergeAdapter is True
    assert raw == {"learningRate": "0.01", "mergeAdapter": "true"}
    with pytest.raises(ConfigError, match="unknown hyperparameter variable FLYWHEEL_HP_BOGUS"):
        hyperparameters_from_env({"FLYWHEEL_HP_BOGUS": "1"})


def test_the_readme_table_lists_every_name() -> None:
    table = markdown_table()
    for name in SPECS:
        assert f"| `{name}` |" in table


def test_a_caller_may_take_only_some_names() -> None:
    """The evaluator takes EVALUATION_NAMES; the others keep their defaults and are refused."""
    hp = parse_hyperparameters({"batchSize": "2", "maxSeqLen": "64", "precision": "fp32"}, EVALUATION_NAMES)
    assert hp == Hyperparameters(batchSize=2, maxSeqLen=64, precision="fp32")
    with pytest.raises(ConfigError, match="unknown hyperparameter 'epochs': epochs is a training hyperparameter; the evaluation takes only batchSize, maxSeqLen, precision"):
        parse_hyperparameters({"epochs": "2"}, EVALUATION_NAMES)
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 'maxseqlen' \(did you mean maxSeqLen\?\); known: batchSize, maxSeqLen, precision$"):
        parse_hyperparameters({"maxseqlen": "64"}, EVALUATION_NAMES)
    hp, raw = hyperparameters_from_env({"FLYWHEEL_HP_PRECISION": "bf16"}, EVALUATION_NAMES)
    assert hp.precision == "bf16" and raw == {"precision": "bf16"}
    with pytest.raises(ConfigError, match="unknown hyperparameter variable FLYWHEEL_HP_SEED: seed is a training hyperparameter"):
        hyperparameters_from_env({"FLYWHEEL_HP_SEED": "1"}, EVALUATION_NAMES)
    # the trainer takes them all, as before
    assert parse_hyperparameters({"epochs": "2", "batchSize": "2"}).epochs == 2
