"""``python -m flywheel_trainer.evaluate``: the evaluation Job, comparing a candidate with its base.

The trainer runs for real (as the RetrainJob's Job runs it) and the evaluator then reads what it
wrote; its numbers must be the trainer's own. Deliberately worse candidates must look worse, and
every bad variable or candidate must exit 3 naming what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TRAINER_ROOT, contract_env, eval_env, run_evaluator, run_trainer
from test_dataset import TOKEN, Server, _no_proxy, http_server  # noqa: F401  (fixtures)

from flywheel_trainer import evaluate as evaluator
from flywheel_trainer import synthetic
from flywheel_trainer.cli import exit_code_for
from flywheel_trainer.contract import parse_eval_env
from flywheel_trainer.dataset import write_snapshot
from flywheel_trainer.errors import EXIT_BAD_CONFIG, EXIT_OK, EXIT_TRANSIENT, ConfigError, DatasetError, TransientError
from flywheel_trainer.hyperparameters import EVALUATION_NAMES, Hyperparameters

METRICS = {"evalLoss", "evalLossBefore", "preferenceAccuracy", "preferenceAccuracyBefore", "evalRows"}
TRAIN_HP = {"learningRate": "1e-2", "maxSteps": "24", "batchSize": "8", "seed": "1", "logEvery": "100"}


def _train(tmp: Path, base: Path, snapshot: tuple[Path, str], **hp: str) -> tuple[Path, dict[str, Any]]:
    dataset, sha = snapshot
    env = contract_env(tmp, base, dataset, sha, {**TRAIN_HP, **hp})
    done = run_trainer(env)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out", json.loads(Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text())


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory, base_model: Path, snapshot: tuple[Path, str]) -> tuple[Path, dict[str, Any]]:
    """The trainer's default output: a LoRA adapter (and its result line)."""
    return _train(tmp_path_factory.mktemp("train-adapter"), base_model, snapshot)


@pytest.fixture(scope="module")
def trained_merged(tmp_path_factory: pytest.TempPathFactory, base_model: Path, snapshot: tuple[Path, str]) -> tuple[Path, dict[str, Any]]:
    """mergeAdapter: true: the merged model at the top, the adapter in adapter/."""
    return _train(tmp_path_factory.mktemp("train-merged"), base_model, snapshot, mergeAdapter="true")


def _evaluated(env: dict[str, str]) -> dict[str, Any]:
    """Run the evaluator as the Job does and check the result line's shape."""
    done = run_evaluator(env)
    assert done.returncode == 0, done.stderr[-3000:]
    text = Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text()
    assert text.endswith("\n") and text.count("\n") == 1 and len(text.encode()) <= 4096
    assert text.startswith('{"metrics":{') and " " not in text, "compact JSON"
    result = json.loads(text)
    assert list(result) == ["metrics"]
    metrics = result["metrics"]
    assert set(metrics) == METRICS, metrics
    assert list(metrics) == sorted(metrics)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert isinstance(metrics["evalRows"], int)
    return metrics


def _same_as_the_trainers(evaluated: dict[str, Any], trained: dict[str, Any]) -> None:
    """The evaluator's numbers are the trainer's: the same rows, the same definitions. Both are
    rounded to 6 significant digits, and a merged model differs from base + adapter by float
    rounding, hence the tolerance."""
    for name in METRICS:
        assert evaluated[name] == pytest.approx(trained[name], rel=2e-5, abs=1e-6), name


# -- end to end: the trainer, then the evaluator on what it wrote -------------------------------


def test_an_adapter_candidate_gets_the_trainers_numbers(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]]
) -> None:
    out, result = trained_adapter
    assert result["artifact"] == "adapter" and (out / "adapter_config.json").is_file()
    dataset, sha = snapshot
    metrics = _evaluated(eval_env(tmp_path, base_model, dataset, sha, out, "adapter"))
    _same_as_the_trainers(metrics, result["metrics"])
    assert metrics["evalLoss"] < metrics["evalLossBefore"], "the trained candidate is better than its base"
    assert metrics["evalRows"] == sum(1 for _ in open(dataset / "sft.heldout.jsonl")) + sum(1 for _ in open(dataset / "dpo.heldout.jsonl"))


def test_a_merged_model_candidate_gets_the_trainers_numbers(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_merged: tuple[Path, dict[str, Any]]
) -> None:
    out, result = trained_merged
    assert result["artifact"] == "model" and (out / "config.json").is_file()
    dataset, sha = snapshot
    metrics = _evaluated(eval_env(tmp_path, base_model, dataset, sha, out, "model"))
    _same_as_the_trainers(metrics, result["metrics"])
    assert metrics["evalLoss"] < metrics["evalLossBefore"]


def test_the_adapter_beside_a_merged_model_gives_the_same_numbers(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_merged: tuple[Path, dict[str, Any]]
) -> None:
    """In-process: base + adapter/ computes what the merged model computes."""
    out, result = trained_merged
    dataset, sha = snapshot
    env = eval_env(tmp_path, base_model, dataset, sha, out / "adapter", "adapter")
    metrics = evaluator.run(env)["metrics"]
    _same_as_the_trainers(metrics, result["metrics"])


def test_the_batch_size_does_not_change_the_numbers(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]]
) -> None:
    out, result = trained_adapter
    dataset, sha = snapshot
    metrics = evaluator.run(eval_env(tmp_path, base_model, dataset, sha, out, "adapter", {"batchSize": "3", "precision": "fp32"}))["metrics"]
    _same_as_the_trainers(metrics, result["metrics"])


def test_max_seq_len_truncates_as_in_training(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]]
) -> None:
    """maxSeqLen is the evaluation's too: a shorter one cuts the prompts, so the numbers move."""
    out, result = trained_adapter
    dataset, sha = snapshot
    metrics = evaluator.run(eval_env(tmp_path, base_model, dataset, sha, out, "adapter", {"maxSeqLen": "8"}))["metrics"]
    assert metrics["evalRows"] == result["metrics"]["evalRows"]
    assert metrics["evalLossBefore"] != pytest.approx(result["metrics"]["evalLossBefore"], rel=1e-3)


def test_dpo_only_reports_the_loss_on_the_chosen_answers(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]]
) -> None:
    """With FLYWHEEL_DATASET_FORMATS=DPO only the held-out pairs count; without DPO pairs there is
    no preferenceAccuracy."""
    out, _ = trained_adapter
    dataset, sha = snapshot
    pairs = sum(1 for _ in open(dataset / "dpo.heldout.jsonl"))
    dpo = evaluator.run(eval_env(tmp_path / "dpo", base_model, dataset, sha, out, "adapter", FLYWHEEL_DATASET_FORMATS="DPO"))["metrics"]
    assert set(dpo) == METRICS and dpo["evalRows"] == pairs
    sft = evaluator.run(eval_env(tmp_path / "sft", base_model, dataset, sha, out, "adapter", FLYWHEEL_DATASET_FORMATS="SFT"))["metrics"]
    assert set(sft) == {"evalLoss", "evalLossBefore", "evalRows"}
    assert sft["evalRows"] == sum(1 for _ in open(dataset / "sft.heldout.jsonl"))


# -- deliberately worse candidates --------------------------------------------------------------


def test_a_noisy_copy_of_the_base_is_worse_than_the_base(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    noisy = tmp_path / "noisy"
    model.save_pretrained(str(noisy))
    dataset, sha = snapshot
    metrics = evaluator.run(eval_env(tmp_path, base_model, dataset, sha, noisy, "model"))["metrics"]
    assert metrics["evalLoss"] > metrics["evalLossBefore"] + 0.1, metrics


def test_a_random_adapter_is_worse_than_the_base(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    """The adapter is really applied: a large random one makes the held-out loss rise."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base_model)),
        # On lm_head too: the random base predicts near-uniformly whatever its layers do, so
        # only a change of the output layer shows in the loss.
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "lm_head"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():  # lora_B starts at zero (the adapter a no-op): make it large and random
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    adapter = tmp_path / "random-adapter"
    model.save_pretrained(str(adapter), save_embedding_layers=False)
    dataset, sha = snapshot
    metrics = evaluator.run(eval_env(tmp_path, base_model, dataset, sha, adapter, "adapter"))["metrics"]
    assert metrics["evalLoss"] > metrics["evalLossBefore"] + 0.1, metrics


# -- the environment ------------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> dict[str, str]:
    """A valid evaluation environment whose candidate is a directory with an adapter_config.json
    (parsing looks no further)."""
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "adapter_config.json").write_text("{}")
    dataset, sha = snapshot
    return eval_env(tmp_path, base_model, dataset, sha, candidate, "adapter", {"batchSize": "4"})


def test_a_full_environment_parses(good: dict[str, str], tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    config = parse_eval_env(good)
    assert config.dataset.local_dir == snapshot[0] and config.dataset_sha256 == snapshot[1]
    assert config.formats == ("SFT", "DPO") and config.base_model_dir == base_model
    assert config.base_version == "v1" and config.candidate_version == f"v1-ft-{snapshot[1][:8]}"
    assert config.candidate_dir == tmp_path / "candidate" and config.candidate_artifact == "adapter"
    assert config.hyperparameters == Hyperparameters(batchSize=4)
    assert config.termination_log == tmp_path / "evaluation-log"
    good["FLYWHEEL_CANDIDATE_DIR"] = f"file://{tmp_path / 'candidate'}"
    good["FLYWHEEL_CANDIDATE_VERSION"] = "V2.upper_Case-ok"
    del good["FLYWHEEL_TERMINATION_LOG"]
    config = parse_eval_env(good)
    assert config.candidate_dir == tmp_path / "candidate" and config.candidate_version == "V2.upper_Case-ok"
    assert config.termination_log == Path("/dev/termination-log")


def test_the_evaluation_hyperparameters_and_their_variables(good: dict[str, str]) -> None:
    good["FLYWHEEL_HYPERPARAMETERS"] = '{"batchSize": "2", "maxSeqLen": "64", "precision": "fp32"}'
    hp = parse_eval_env(good).hyperparameters
    assert (hp.batchSize, hp.maxSeqLen, hp.precision) == (2, 64, "fp32")
    del good["FLYWHEEL_HYPERPARAMETERS"]
    good.update(FLYWHEEL_HP_BATCHSIZE="16", FLYWHEEL_HP_MAXSEQLEN="32")
    hp = parse_eval_env(good).hyperparameters
    assert (hp.batchSize, hp.maxSeqLen) == (16, 32)
    assert set(EVALUATION_NAMES) == {"batchSize", "maxSeqLen", "precision"}


BAD = [
    ("FLYWHEEL_DATASET_URI", None, "FLYWHEEL_DATASET_URI is not set"),
    ("FLYWHEEL_DATASET_URI", "s3://bucket/snap", "FLYWHEEL_DATASET_URI='s3://bucket/snap': unsupported URI scheme s3://"),
    ("FLYWHEEL_DATASET_SHA256", None, "FLYWHEEL_DATASET_SHA256 is not set"),
    ("FLYWHEEL_DATASET_SHA256", "abc123", "FLYWHEEL_DATASET_SHA256='abc123' is not 64 hexadecimal digits"),
    ("FLYWHEEL_DATASET_FORMATS", None, "FLYWHEEL_DATASET_FORMATS is not set"),
    ("FLYWHEEL_DATASET_FORMATS", "SFT,KTO", "unknown format 'KTO'"),
    ("FLYWHEEL_BASE_MODEL_URI", None, "FLYWHEEL_BASE_MODEL_URI is not set"),
    ("FLYWHEEL_BASE_MODEL_URI", "/nonexistent/model", "FLYWHEEL_BASE_MODEL_URI='/nonexistent/model': /nonexistent/model is not a directory"),
    ("FLYWHEEL_BASE_VERSION", None, "FLYWHEEL_BASE_VERSION is not set"),
    ("FLYWHEEL_BASE_VERSION", "-v1", "FLYWHEEL_BASE_VERSION='-v1' is not a version label"),
    ("FLYWHEEL_CANDIDATE_DIR", None, "FLYWHEEL_CANDIDATE_DIR is not set"),
    ("FLYWHEEL_CANDIDATE_DIR", "/nonexistent/candidate", "FLYWHEEL_CANDIDATE_DIR='/nonexistent/candidate': /nonexistent/candidate is not a directory"),
    ("FLYWHEEL_CANDIDATE_DIR", "s3://models/x", "FLYWHEEL_CANDIDATE_DIR='s3://models/x': unsupported URI scheme s3://"),
    ("FLYWHEEL_CANDIDATE_ARTIFACT", None, "FLYWHEEL_CANDIDATE_ARTIFACT is not set"),
    ("FLYWHEEL_CANDIDATE_ARTIFACT", "merged", "FLYWHEEL_CANDIDATE_ARTIFACT='merged' must be one of model, adapter"),
    ("FLYWHEEL_CANDIDATE_ARTIFACT", "Model", "FLYWHEEL_CANDIDATE_ARTIFACT='Model' must be one of model, adapter"),
    ("FLYWHEEL_CANDIDATE_VERSION", None, "FLYWHEEL_CANDIDATE_VERSION is not set"),
    ("FLYWHEEL_CANDIDATE_VERSION", "v" * 64, "is not a version label"),
    ("FLYWHEEL_CANDIDATE_VERSION", "v1 ft", "FLYWHEEL_CANDIDATE_VERSION='v1 ft' is not a version label"),
    ("FLYWHEEL_HYPERPARAMETERS", "not json", "FLYWHEEL_HYPERPARAMETERS is not valid JSON"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"batchSize": 4}', "the value of 'batchSize' must be a string"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"batchSize": "0"}', "batchSize=0 is out of range [1, 4096]"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"precision": "fp8"}', "precision='fp8' must be one of auto, bf16, fp32"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"batchsize": "4"}', "unknown hyperparameter 'batchsize' (did you mean batchSize?); known: batchSize, maxSeqLen, precision"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"learningRate": "1e-4"}', "unknown hyperparameter 'learningRate': learningRate is a training hyperparameter; the evaluation takes only batchSize, maxSeqLen, precision"),
    ("FLYWHEEL_HYPERPARAMETERS", '{"bogus": "1"}', "unknown hyperparameter 'bogus'; known: batchSize, maxSeqLen, precision"),
]


@pytest.mark.parametrize("name,value,message", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_each_bad_variable_is_a_config_error(good: dict[str, str], name: str, value: str | None, message: str) -> None:
    if value is None:
        good.pop(name, None)
    else:
        good[name] = value
    with pytest.raises(ConfigError) as raised:
        parse_eval_env(good)
    assert message in str(raised.value)
    assert raised.value.exit_code == EXIT_BAD_CONFIG


def test_a_training_hyperparameter_variable_is_refused(good: dict[str, str]) -> None:
    del good["FLYWHEEL_HYPERPARAMETERS"]
    good["FLYWHEEL_HP_LEARNINGRATE"] = "1e-4"
    with pytest.raises(ConfigError, match="unknown hyperparameter variable FLYWHEEL_HP_LEARNINGRATE: learningRate is a training hyperparameter"):
        parse_eval_env(good)
    del good["FLYWHEEL_HP_LEARNINGRATE"]
    good["FLYWHEEL_HP_BOGUS"] = "1"
    with pytest.raises(ConfigError, match="unknown hyperparameter variable FLYWHEEL_HP_BOGUS; known: batchSize, maxSeqLen, precision"):
        parse_eval_env(good)


def _candidate(tmp_path: Path, *files: str) -> Path:
    directory = tmp_path / "cand"
    directory.mkdir()
    for name in files:
        (directory / name).write_text("{}")
    return directory


@pytest.mark.parametrize(
    "artifact,files,message",
    [
        ("model", (), "has no config.json (expected a whole model in Hugging Face layout)"),
        ("adapter", (), "has no adapter_config.json (expected a PEFT adapter)"),
        ("model", ("adapter_config.json",), "has no config.json (expected a whole model in Hugging Face layout); it holds an adapter: is FLYWHEEL_CANDIDATE_ARTIFACT adapter?"),
        ("adapter", ("config.json",), "has no adapter_config.json (expected a PEFT adapter); it holds a whole model: is FLYWHEEL_CANDIDATE_ARTIFACT model?"),
        ("model", ("config.json", "adapter_config.json"), "has an adapter_config.json beside config.json, so it is not a whole model"),
    ],
)
def test_a_candidate_directory_that_is_not_what_the_artifact_says(good: dict[str, str], tmp_path: Path, artifact: str, files: tuple[str, ...], message: str) -> None:
    directory = _candidate(tmp_path, *files)
    good.update(FLYWHEEL_CANDIDATE_DIR=str(directory), FLYWHEEL_CANDIDATE_ARTIFACT=artifact)
    with pytest.raises(ConfigError) as raised:
        parse_eval_env(good)
    assert str(raised.value).startswith(f"FLYWHEEL_CANDIDATE_DIR={str(directory)!r} with FLYWHEEL_CANDIDATE_ARTIFACT={artifact}: ")
    assert message in str(raised.value)


def test_a_candidate_that_is_a_file_is_refused(good: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    good["FLYWHEEL_CANDIDATE_DIR"] = str(tmp_path / "file")
    with pytest.raises(ConfigError, match="is not a directory"):
        parse_eval_env(good)


# -- candidates that cannot be loaded -------------------------------------------------------------


def _broken_model(tmp_path: Path, base_model: Path) -> Path:
    directory = tmp_path / "no-weights"
    directory.mkdir()
    shutil.copy(base_model / "config.json", directory)
    return directory


def _other_bases_adapter(tmp_path: Path, base_model_no_template: Path) -> Path:
    """An adapter of a base model of another size: its shapes do not fit."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_model_no_template)), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    directory = tmp_path / "other-adapter"
    model.save_pretrained(str(directory))
    return directory


def test_a_model_directory_without_weights_is_bad_configuration(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    env = eval_env(tmp_path, base_model, dataset, sha, _broken_model(tmp_path, base_model), "model")
    with pytest.raises(ConfigError, match=r"FLYWHEEL_CANDIDATE_DIR: cannot load the candidate model from .*no-weights"):
        evaluator.run(env)
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_an_adapter_of_another_base_is_bad_configuration(tmp_path: Path, base_model: Path, base_model_no_template: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    env = eval_env(tmp_path, base_model, dataset, sha, _other_bases_adapter(tmp_path, base_model_no_template), "adapter")
    with pytest.raises(ConfigError, match=r"FLYWHEEL_CANDIDATE_DIR: cannot load the candidate adapter from .*size mismatch") as raised:
        evaluator.run(env)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 1000 and "more lines)" in message, "one line, not every tensor's"


@pytest.mark.parametrize(
    "damage,message",
    [
        ("weights-missing", "cannot load the candidate adapter"),
        ("weights-corrupt", "SafetensorError"),
        ("config-not-json", "JSONDecodeError"),
        ("config-empty", "KeyError: 'peft_type'"),
    ],
)
def test_a_damaged_adapter_is_bad_configuration(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]], damage: str, message: str
) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_adapter[0], adapter)
    if damage == "weights-missing":
        (adapter / "adapter_model.safetensors").unlink()
    elif damage == "weights-corrupt":
        (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "config-not-json":
        (adapter / "adapter_config.json").write_text("not json")
    else:
        (adapter / "adapter_config.json").write_text("{}")
    dataset, sha = snapshot
    with pytest.raises(ConfigError, match=message):
        evaluator.run(eval_env(tmp_path, base_model, dataset, sha, adapter, "adapter"))


def test_a_model_of_a_smaller_vocabulary_is_bad_configuration(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    small = synthetic.build_model(vocab_size=10, hidden=32, layers=1, heads=2)
    small.save_pretrained(str(tmp_path / "small"))
    dataset, sha = snapshot
    with pytest.raises(ConfigError, match=r"has 10 token embeddings, fewer than the \d+ tokens of the base model's tokenizer"):
        evaluator.run(eval_env(tmp_path, base_model, dataset, sha, tmp_path / "small", "model"))


# -- the snapshot ---------------------------------------------------------------------------------


SFT_ROW = {"messages": [{"role": "user", "content": "what colour is the item1 ?"}, {"role": "assistant", "content": "the item1 is red ."}]}
DPO_ROW = {"prompt": [{"role": "user", "content": "what colour is the item1 ?"}], "chosen": [{"role": "assistant", "content": "the item1 is red ."}], "rejected": [{"role": "assistant", "content": "the item1 is blue ."}]}


@pytest.mark.parametrize(
    "heldout_sft,heldout_dpo,formats",
    [([], [], "SFT,DPO"), ([], [DPO_ROW], "SFT"), ([SFT_ROW], [], "DPO")],
    ids=["none-at-all", "only-pairs-but-SFT", "only-rows-but-DPO"],
)
def test_a_snapshot_without_held_out_rows_is_refused_before_any_model_is_loaded(
    tmp_path: Path, good: dict[str, str], heldout_sft: list, heldout_dpo: list, formats: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = write_snapshot(tmp_path / "ds", [SFT_ROW], heldout_sft, [DPO_ROW], heldout_dpo)
    good.update(FLYWHEEL_DATASET_URI=str(tmp_path / "ds"), FLYWHEEL_DATASET_SHA256=sha, FLYWHEEL_DATASET_FORMATS=formats)

    def no_loading(*_: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(evaluator, "load_base", no_loading)
    with pytest.raises(DatasetError, match=rf"nothing to evaluate: the snapshot has no held-out rows of these formats \(FLYWHEEL_DATASET_FORMATS={formats}, snapshot sha256 {sha}\)"):
        evaluator.run(good)
    assert exit_code_for(DatasetError("x"))[0] == EXIT_BAD_CONFIG


def test_held_out_rows_that_all_skip_are_refused(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel_trainer.formatting import ChatFormatter

    monkeypatch.setattr(ChatFormatter, "encode", lambda self, messages: None)
    dataset, sha = snapshot
    with pytest.raises(DatasetError, match=r"nothing to evaluate: every held-out row was skipped \(no answer token within maxSeqLen=1024\)"):
        evaluator.run(eval_env(tmp_path, base_model, dataset, sha, trained_adapter[0], "adapter"))


def test_a_sha256_mismatch_is_refused(good: dict[str, str]) -> None:
    good["FLYWHEEL_DATASET_SHA256"] = "ab" * 32
    with pytest.raises(DatasetError, match="dataset sha256 mismatch: FLYWHEEL_DATASET_SHA256 is abab"):
        evaluator.run(good)


def test_the_dataset_over_http_is_classified_as_for_training(good: dict[str, str], http_server: Server, snapshot: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same fetch: a 404 is retried and then transient (75), a refused token is bad
    configuration (3) and names the file, not the token."""
    monkeypatch.setattr("flywheel_trainer.dataset.time.sleep", lambda _: None)
    good["FLYWHEEL_DATASET_URI"] = f"{http_server.base}/no-such-snapshot"
    with pytest.raises(TransientError, match="no-such-snapshot/SHA256SUMS failed 3 times"):
        evaluator.run(good)
    shutil.copytree(snapshot[0], http_server.root / "ds")
    http_server.token = TOKEN
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token-123")
    good.update(FLYWHEEL_DATASET_URI=f"{http_server.base}/ds", FLYWHEEL_DATASET_TOKEN_FILE=str(token_file))
    with pytest.raises(DatasetError, match=f"HTTP 401 .* refused the bearer token from FLYWHEEL_DATASET_TOKEN_FILE={token_file}") as raised:
        evaluator.run(good)
    assert "wrong-token-123" not in str(raised.value)


# -- the process -----------------------------------------------------------------------------------


def test_the_process_fetches_with_the_token_and_never_prints_it(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]], http_server: Server
) -> None:
    shutil.copytree(snapshot[0], http_server.root / "ds")
    http_server.token = TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    env = eval_env(
        tmp_path, base_model, snapshot[0], snapshot[1], trained_adapter[0], "adapter",
        FLYWHEEL_DATASET_URI=f"{http_server.base}/ds", FLYWHEEL_DATASET_TOKEN_FILE=str(token_file),
    )
    done = run_evaluator(env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert http_server.requests and all(auth == f"Bearer {TOKEN}" for _, auth in http_server.requests)
    assert f"bearer token from FLYWHEEL_DATASET_TOKEN_FILE={token_file}" in done.stderr
    for text in (done.stdout, done.stderr, Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text()):
        assert TOKEN not in text


def test_the_process_exits_3_on_a_missing_variable(good: dict[str, str]) -> None:
    del good["FLYWHEEL_CANDIDATE_ARTIFACT"]
    done = run_evaluator(good, timeout=600)
    assert done.returncode == EXIT_BAD_CONFIG, done.stderr
    assert "flywheel-evaluator: bad configuration: FLYWHEEL_CANDIDATE_ARTIFACT is not set (exit 3)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(good["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_the_process_exits_3_on_a_candidate_it_cannot_load(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    env = eval_env(tmp_path, base_model, dataset, sha, _broken_model(tmp_path, base_model), "model")
    done = run_evaluator(env)
    assert done.returncode == EXIT_BAD_CONFIG, done.stderr[-3000:]
    assert "bad configuration: FLYWHEEL_CANDIDATE_DIR: cannot load the candidate model from" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()


def test_the_process_exits_3_on_a_snapshot_without_held_out_rows(tmp_path: Path, good: dict[str, str]) -> None:
    sha = write_snapshot(tmp_path / "ds", [SFT_ROW], [], [DPO_ROW], [])
    good.update(FLYWHEEL_DATASET_URI=str(tmp_path / "ds"), FLYWHEEL_DATASET_SHA256=sha)
    done = run_evaluator(good, timeout=600)
    assert done.returncode == EXIT_BAD_CONFIG, done.stderr
    assert "bad dataset: nothing to evaluate: the snapshot has no held-out rows" in done.stderr


def test_a_termination_log_that_cannot_be_written_is_transient(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], trained_adapter: tuple[Path, dict[str, Any]]
) -> None:
    dataset, sha = snapshot
    env = eval_env(tmp_path, base_model, dataset, sha, trained_adapter[0], "adapter", FLYWHEEL_TERMINATION_LOG=str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(TransientError, match="writing the result line to") as raised:
        evaluator.run(env)
    assert exit_code_for(raised.value)[0] == EXIT_TRANSIENT


def test_usage_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluator.main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("flywheel-evaluator ")
    assert evaluator.main(["extra"]) == EXIT_BAD_CONFIG
    assert "usage: python -m flywheel_trainer.evaluate" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_evaluation_with_75(monkeypatch: pytest.MonkeyPatch, signum: signal.Signals) -> None:
    """Preemption: nothing of a half-done evaluation is kept, the retry starts it again."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    finished = []

    def interrupted_run(env: object) -> None:
        os.kill(os.getpid(), signum)
        for _ in range(1000):  # the handler raises at the next bytecode
            pass
        finished.append(True)

    monkeypatch.setattr(evaluator, "run", interrupted_run)
    try:
        assert evaluator.main([]) == EXIT_TRANSIENT
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert not finished


# -- the docs --------------------------------------------------------------------------------------


def test_the_contract_documents_the_evaluation_job() -> None:
    contract = (TRAINER_ROOT.parent / "docs" / "trainer-contract.md").read_text()
    readme = (TRAINER_ROOT / "README.md").read_text()
    assert "## Metrics" in contract and "## The evaluation Job" in contract
    section = contract[contract.index("## The evaluation Job"):]
    for variable in (
        "FLYWHEEL_DATASET_URI", "FLYWHEEL_DATASET_TOKEN_FILE", "FLYWHEEL_DATASET_SHA256", "FLYWHEEL_DATASET_FORMATS",
        "FLYWHEEL_BASE_MODEL_URI", "FLYWHEEL_BASE_VERSION", "FLYWHEEL_CANDIDATE_DIR", "FLYWHEEL_CANDIDATE_ARTIFACT",
        "FLYWHEEL_CANDIDATE_VERSION", "FLYWHEEL_HYPERPARAMETERS", "FLYWHEEL_HP_", "FLYWHEEL_TERMINATION_LOG",
    ):
        assert f"`{variable}" in section, variable
    for name in EVALUATION_NAMES:
        assert f"`{name}`" in section, name
    metrics = contract[contract.index("## Metrics"):contract.index("## The evaluation Job")]
    for name in METRICS:
        assert f"`{name}`" in metrics, name
    assert "python -m flywheel_trainer.evaluate" in readme and "python -m flywheel_trainer.evaluate" in contract
