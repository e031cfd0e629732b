"""``python -m flywheel_trainer`` as the Job runs it: a subprocess configured by the environment."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import contract_env, subprocess_env, run_trainer

E2E_HP = {"learningRate": "1e-2", "epochs": "4", "batchSize": "8", "checkpointEvery": "25", "mergeAdapter": "true", "seed": "1"}


def test_a_full_run_learns_and_writes_the_model_and_one_result_line(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    env = contract_env(tmp_path, base_model, dataset, sha, E2E_HP)
    done = run_trainer(env)
    assert done.returncode == 0, done.stderr[-3000:]

    text = Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text()
    assert text.endswith("\n") and text.count("\n") == 1 and len(text.encode()) <= 4096
    result = json.loads(text)
    assert result["version"] == f"v1-ft-{sha[:8]}"
    assert result["uri"] == env["FLYWHEEL_OUTPUT_URI"]
    assert result["artifact"] == "model", "mergeAdapter: the merged model is at the URI's top level"
    m = result["metrics"]
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert m["evalLoss"] < m["evalLossBefore"], m
    assert m["trainRows"] == sum(1 for _ in open(dataset / "sft.jsonl")) + sum(1 for _ in open(dataset / "dpo.jsonl"))
    assert m["evalRows"] == sum(1 for _ in open(dataset / "sft.heldout.jsonl")) + sum(1 for _ in open(dataset / "dpo.heldout.jsonl"))
    assert 0 <= m["preferenceAccuracy"] <= 1 and m["steps"] > 0 and m["tokensPerSecond"] > 0

    out = tmp_path / "out"
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.json", "model.safetensors", "tokenizer.json", "flywheel-training.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "flywheel-training.json").read_text())
    assert info["datasetSha256"] == sha and info["hyperparameters"]["mergeAdapter"] is True
    assert info["uri"] == env["FLYWHEEL_OUTPUT_URI"] and info["artifact"] == "model"

    # The merged model computes what the base model with the adapter computes.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_model)), str(out / "adapter")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(base_model)).eval()
    ids = torch.tensor([[2, 5, 9, 14, 30, 31, 7]])
    with torch.no_grad():
        a, b, c = merged(ids).logits, adapted(ids).logits, base(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3), "training changed the model"


def test_a_pvc_output_is_written_to_the_output_dir_and_reported_as_the_pvc_uri(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]
) -> None:
    """The operator's layout: the claim mounted at /var/run/flywheel/output-claim, the model
    written to <mount>/<path>, and the result naming pvc://<claim>/<path>; without mergeAdapter
    the artifact is the adapter."""
    dataset, sha = snapshot
    out = tmp_path / "output-claim" / "support-chat" / "x"
    env = contract_env(
        tmp_path, base_model, dataset, sha, {"maxSteps": "2", "batchSize": "2"},
        FLYWHEEL_OUTPUT_URI="pvc://models/support-chat/x", FLYWHEEL_OUTPUT_DIR=str(out),
    )
    done = run_trainer(env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(Path(env["FLYWHEEL_TERMINATION_LOG"]).read_text())
    assert result["uri"] == "pvc://models/support-chat/x"
    assert result["artifact"] == "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "flywheel-training.json"):
        assert (out / name).is_file(), name
    assert not (out / "config.json").exists() and not (out / "adapter").exists(), "an adapter only, no merged model"
    info = json.loads((out / "flywheel-training.json").read_text())
    assert info["uri"] == "pvc://models/support-chat/x" and info["artifact"] == "adapter"
    assert "output pvc://models/support-chat/x (written to " + str(out) + ")" in done.stderr


def test_sigterm_saves_a_checkpoint_and_exits_75(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str]) -> None:
    dataset, sha = snapshot
    hp = {"maxSteps": "100000", "batchSize": "2", "checkpointEvery": "5", "learningRate": "1e-3"}
    env = contract_env(tmp_path, base_model, dataset, sha, hp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flywheel_trainer"], env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoints = Path(env["FLYWHEEL_CHECKPOINT_DIR"])
    try:
        deadline = time.monotonic() + 600
        while not list(checkpoints.glob("run-*/step-*")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 75, stderr[-3000:]
    assert "checkpoint saved (SIGTERM)" in stderr
    steps = sorted(int(p.name.removeprefix("step-")) for p in checkpoints.glob("run-*/step-*"))
    assert steps and steps[-1] >= 5 and steps[-1] < 100000
    assert not Path(env["FLYWHEEL_TERMINATION_LOG"]).exists()
