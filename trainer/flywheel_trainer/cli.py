"""``python -m flywheel_trainer``: one training run under the trainer contract.

The order is: parse the environment, fetch and verify the dataset (both before torch is even
imported, so bad configuration fails in a second), load the base model, evaluate it on the
held-out rows, train a LoRA adapter (resuming from the newest checkpoint), evaluate again, write
the adapter (and the merged model) to FLYWHEEL_OUTPUT_DIR, upload it for an s3:// output, and
only then write the result line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping

from . import __version__
from .contract import Config, parse_env
from .dataset import Snapshot, load_snapshot
from .errors import EXIT_BAD_CONFIG, EXIT_CRASH, EXIT_OK, EXIT_TRANSIENT, ConfigError, DatasetError, Preempted, TrainerError, is_out_of_memory
from .models import device_and_precision, load_base, pad_token_id
from .result import result_line, write_termination_log

log = logging.getLogger("flywheel_trainer")


class StopFlag:
    """Set by SIGTERM (preemption, node drain) or SIGINT; the loop checkpoints and exits 75."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: str | None = None

    def set(self, name: str = "request") -> None:
        self.signal = name
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.set(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def _fingerprint_parts(config: Config) -> dict[str, Any]:
    hp = config.hyperparameters.as_dict()
    for ignored in ("checkpointEvery", "logEvery", "mergeAdapter"):
        hp.pop(ignored)
    base_config = (config.base_model_dir / "config.json").read_bytes()
    return {
        "trainer": __version__,
        "dataset": config.dataset_sha256,
        "formats": list(config.formats),
        "base": hashlib.sha256(base_config).hexdigest(),
        "hyperparameters": hp,
    }


def _save_outputs(config: Config, model: Any, tokenizer: Any, base_dtype: Any, info: dict[str, Any]) -> None:
    """The adapter at the output's top level; with mergeAdapter, the merged model there instead
    and the adapter in ``adapter/``. ``flywheel-training.json`` records how it was trained."""
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if config.hyperparameters.mergeAdapter:
        model.save_pretrained(str(out / "adapter"))
        merged = model.merge_and_unload()
        if base_dtype is not None:
            merged = merged.to(base_dtype)
        merged.save_pretrained(str(out))
    else:
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "flywheel-training.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def run(env: Mapping[str, str], should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """One run; returns the result object (also written to the termination log)."""
    started = time.perf_counter()
    config = parse_env(env)
    log.info(
        "flywheel-trainer %s: dataset %s (sha256 %s, %s), base %s, output %s (written to %s), version %s",
        __version__, config.dataset.describe(), config.dataset_sha256, ",".join(config.formats),
        config.base_model_dir, config.output_uri, config.output_dir, config.version,
    )
    if config.output_s3 is not None:
        # Missing credentials, an unreachable store or a missing bucket fail now, not after training.
        from .upload import check_bucket

        check_bucket(config.output_s3)
    snapshot: Snapshot = load_snapshot(config.dataset, config.dataset_sha256)
    log.info(
        "dataset verified: %d SFT rows (%d held out), %d DPO pairs (%d held out)",
        len(snapshot.sft), len(snapshot.sft_heldout), len(snapshot.dpo), len(snapshot.dpo_heldout),
    )

    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from .checkpoint import CheckpointStore, fingerprint
    from .formatting import ChatFormatter
    from .training import Trainer, encode_snapshot, evaluate, with_before

    transformers.utils.logging.disable_progress_bar()
    hp = config.hyperparameters
    torch.manual_seed(hp.seed)
    device, dtype, autocast = device_and_precision(hp.precision)
    tokenizer, model = load_base(config.base_model_dir, dtype)
    base_dtype = getattr(model.config, "dtype", None)
    if isinstance(base_dtype, str):
        base_dtype = getattr(torch, base_dtype, None)
    pad_id = pad_token_id(tokenizer)

    formatter = ChatFormatter(tokenizer, hp.maxSeqLen)
    encoded = encode_snapshot(snapshot, formatter, config.formats)
    if encoded.ignored:
        log.info("ignored %d rows of formats not in FLYWHEEL_DATASET_FORMATS", encoded.ignored)
    if encoded.skipped:
        log.warning("skipped %d rows with no answer token within maxSeqLen=%d", encoded.skipped, hp.maxSeqLen)
    train_rows = len(encoded.sft_train) + len(encoded.dpo_train)
    eval_rows = encoded.eval_rows
    if train_rows == 0:
        raise DatasetError(f"the snapshot has no training rows of the formats {','.join(config.formats)}")
    log.info(
        "formatting: %s; device %s, %s",
        "the tokenizer's chat template" if formatter.uses_chat_template else "the fallback template",
        device, str(dtype).removeprefix("torch."),
    )

    model.to(device)
    if hp.gradientCheckpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=hp.loraRank, lora_alpha=hp.lora_alpha, lora_dropout=hp.loraDropout,
        target_modules=hp.target_modules, task_type="CAUSAL_LM", bias="none",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"cannot apply LoRA (targetModules={hp.targetModules!r}): {e}") from e
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d alpha=%g: %d trainable parameters of %d", hp.loraRank, hp.lora_alpha, trainable, total)

    store = None
    if config.checkpoint_dir is not None:
        store = CheckpointStore(config.checkpoint_dir, fingerprint(_fingerprint_parts(config)))
    trainer = Trainer(model, encoded, hp, pad_id, device, autocast, store, should_stop)
    trainer.resume()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if not trainer.state.before:
        with model.disable_adapter():
            before, reference = evaluate(model, encoded, hp, pad_id, device, autocast)
        trainer.state.before = {"metrics": before, "reference": reference}
        log.info("held-out before training: %s", json.dumps(before))
    before = trainer.state.before["metrics"]
    reference = [tuple(x) for x in trainer.state.before["reference"]]

    state = trainer.train()
    if should_stop():
        raise Preempted(f"stopped after training, before the evaluation; checkpoint at step {state.step}")
    after, _ = evaluate(model, encoded, hp, pad_id, device, autocast, reference=reference if reference else None)
    log.info("held-out after training: %s", json.dumps(after))

    metrics: dict[str, float | int] = with_before(after, before)
    if state.sft_steps:
        metrics["trainLoss"] = state.sft_loss_sum / state.sft_steps
    if state.dpo_steps:
        metrics["trainDpoLoss"] = state.dpo_loss_sum / state.dpo_steps
    metrics.update(
        trainRows=train_rows,
        evalRows=eval_rows,
        steps=state.step,
        trainTokens=state.tokens,
        tokensPerSecond=state.tokens / state.seconds if state.seconds > 0 else 0.0,
        trainSeconds=state.seconds,
        trainableParameters=trainable,
    )
    if encoded.skipped:
        metrics["skippedRows"] = encoded.skipped
    if state.resumed_from >= 0:
        metrics["resumedFromStep"] = state.resumed_from
    if device.type == "cuda":
        metrics["peakGpuMemoryMib"] = torch.cuda.max_memory_allocated(device) / 2**20

    artifact = "model" if hp.mergeAdapter else "adapter"
    info = {
        "version": config.version,
        "uri": config.output_uri,
        "artifact": artifact,
        "baseVersion": config.base_version,
        "baseModel": str(config.base_model_dir),
        "datasetSha256": config.dataset_sha256,
        "formats": list(config.formats),
        "hyperparameters": hp.as_dict(),
        "metrics": metrics,
        "trainer": f"flywheel-trainer {__version__}",
        "retrainJob": config.retrain_job,
        "namespace": config.namespace,
        "attempt": config.attempt,
    }
    _save_outputs(config, model, tokenizer, base_dtype, info)
    log.info("wrote the %s to %s", "merged model and adapter" if hp.mergeAdapter else "adapter", config.output_dir)
    if config.output_s3 is not None:
        from .upload import upload_directory

        upload_directory(config.output_dir, config.output_s3)

    line = result_line(config.version, config.output_uri, artifact, metrics)
    write_termination_log(config.termination_log, line)
    log.info("result (%s, %.1f s): %s", config.termination_log, time.perf_counter() - started, line)
    return json.loads(line)


def exit_code_for(e: BaseException) -> tuple[int, str]:
    """The contract's exit code for a failure, and the line that explains it."""
    if isinstance(e, TrainerError):
        return e.exit_code, f"{e.kind}: {e}"
    if isinstance(e, MemoryError) or is_out_of_memory(e):
        return EXIT_TRANSIENT, f"out of memory: {e}"
    if isinstance(e, OSError):
        return EXIT_TRANSIENT, f"I/O error: {e}"
    return EXIT_CRASH, f"crashed: {type(e).__name__}: {e}"


def configure_process() -> None:
    """Logging to stderr, and Hugging Face kept offline and quiet (both entry points)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def failed(program: str, e: BaseException) -> int:
    """Log a failure as one line (with the traceback for a crash) and return its exit code."""
    code, message = exit_code_for(e)
    if code == EXIT_CRASH:
        traceback.print_exception(e)
    log.error("%s: %s (exit %d)", program, message, code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        print(f"flywheel-trainer {__version__}")
        return EXIT_OK
    if args:
        print("usage: python -m flywheel_trainer  (configured by FLYWHEEL_* variables, see README.md)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_process()
    stop = StopFlag()
    stop.install()
    try:
        run(os.environ, stop)
    except Preempted as e:
        log.error("%s (%s)", e, stop.signal or "stop")
        return e.exit_code
    except Exception as e:  # the top level maps every failure to an exit code
        return failed("flywheel-trainer", e)
    return EXIT_OK
