"""``python -m flywheel_trainer.evaluate``: the evaluation Job, comparing a candidate with its base.

After a RetrainJob's trainer has written its candidate, the operator may run an evaluation Job
on it (docs/trainer-contract.md, "The evaluation Job"). This is the reference one: it reads the
same snapshot as training (the same variables, the same sha256 checks, the same fetch errors),
evaluates the base model and then the candidate on the snapshot's held-out rows with the
trainer's own evaluation code, and writes one line, ``{"metrics":{...}}``, to the termination
log: ``evalLoss`` and ``preferenceAccuracy`` of the candidate, ``evalLossBefore`` and
``preferenceAccuracyBefore`` of the base, and ``evalRows``. The numbers are those the trainer
reports for the same candidate and rows.

The candidate is a whole model (``FLYWHEEL_CANDIDATE_ARTIFACT=model``: loaded after the base
is evaluated and freed) or a PEFT adapter (``adapter``: applied to the base, which is evaluated
with the adapter disabled). Both are fed the base model's tokenizer, as in training.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Mapping

from . import __version__
from .cli import configure_process, failed
from .contract import EvalConfig, parse_eval_env
from .dataset import Snapshot, load_snapshot
from .errors import EXIT_BAD_CONFIG, EXIT_OK, DatasetError, Preempted
from .models import apply_adapter, device_and_precision, load_base, load_candidate_model, pad_token_id
from .result import metrics_line, write_termination_log

log = logging.getLogger("flywheel_trainer")
PROGRAM = "flywheel-evaluator"


def _heldout_of_formats(snapshot: Snapshot, formats: tuple[str, ...]) -> int:
    return (len(snapshot.sft_heldout) if "SFT" in formats else 0) + (len(snapshot.dpo_heldout) if "DPO" in formats else 0)


def _no_heldout_rows(config: EvalConfig, why: str) -> DatasetError:
    return DatasetError(
        f"nothing to evaluate: {why} (FLYWHEEL_DATASET_FORMATS={','.join(config.formats)}, "
        f"snapshot sha256 {config.dataset_sha256}); an evaluation needs held-out rows, "
        "sft.heldout.jsonl or dpo.heldout.jsonl"
    )


def run(env: Mapping[str, str]) -> dict[str, Any]:
    """One evaluation; returns the result object (also written to the termination log)."""
    started = time.perf_counter()
    config = parse_eval_env(env)
    log.info(
        "%s %s: dataset %s (sha256 %s, %s), base %s (version %s), candidate %s %s (version %s)",
        PROGRAM, __version__, config.dataset.describe(), config.dataset_sha256, ",".join(config.formats),
        config.base_model_dir, config.base_version, config.candidate_artifact, config.candidate_dir,
        config.candidate_version,
    )
    snapshot = load_snapshot(config.dataset, config.dataset_sha256)
    log.info(
        "dataset verified: %d held-out SFT rows, %d held-out DPO pairs",
        len(snapshot.sft_heldout), len(snapshot.dpo_heldout),
    )
    # Before any model is loaded: a snapshot without held-out rows fails in a second.
    if _heldout_of_formats(snapshot, config.formats) == 0:
        raise _no_heldout_rows(config, "the snapshot has no held-out rows of these formats")

    import torch
    import transformers

    from .formatting import ChatFormatter
    from .training import encode_snapshot, evaluate, with_before

    transformers.utils.logging.disable_progress_bar()
    hp = config.hyperparameters
    device, dtype, autocast = device_and_precision(hp.precision)
    tokenizer, base = load_base(config.base_model_dir, dtype)
    pad_id = pad_token_id(tokenizer)
    encoded = encode_snapshot(snapshot, ChatFormatter(tokenizer, hp.maxSeqLen), config.formats)
    if encoded.skipped:
        log.warning("skipped %d rows with no answer token within maxSeqLen=%d", encoded.skipped, hp.maxSeqLen)
    if encoded.eval_rows == 0:
        raise _no_heldout_rows(config, f"every held-out row was skipped (no answer token within maxSeqLen={hp.maxSeqLen})")
    log.info("evaluating %d held-out rows on %s, %s", encoded.eval_rows, device, str(dtype).removeprefix("torch."))

    base.to(device)
    if config.candidate_artifact == "adapter":
        model = apply_adapter(base, config.candidate_dir)
        with model.disable_adapter():
            before, _ = evaluate(model, encoded, hp, pad_id, device, autocast)
        log.info("base %s on the held-out rows: %s", config.base_version, json.dumps(before))
    else:
        before, _ = evaluate(base, encoded, hp, pad_id, device, autocast)
        log.info("base %s on the held-out rows: %s", config.base_version, json.dumps(before))
        # One model in memory at a time.
        del base
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = load_candidate_model(config.candidate_dir, dtype, len(tokenizer))
        model.to(device)
    after, _ = evaluate(model, encoded, hp, pad_id, device, autocast)
    log.info("candidate %s on the held-out rows: %s", config.candidate_version, json.dumps(after))

    metrics: dict[str, float | int] = with_before(after, before)
    metrics["evalRows"] = encoded.eval_rows
    line = metrics_line(metrics)
    write_termination_log(config.termination_log, line)
    log.info("result (%s, %.1f s): %s", config.termination_log, time.perf_counter() - started, line)
    return json.loads(line)


def _stop(signum: int, _frame: Any) -> None:
    """SIGTERM (preemption, a node drain) or SIGINT: stop now. Nothing is worth keeping of a
    half-done evaluation, so it ends at once with exit 75 and a retry starts it again."""
    raise Preempted(f"stopped by {signal.Signals(signum).name}; the evaluation starts again on a retry")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        print(f"{PROGRAM} {__version__}")
        return EXIT_OK
    if args:
        print("usage: python -m flywheel_trainer.evaluate  (configured by FLYWHEEL_* variables, see README.md)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_process()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        run(os.environ)
    except Exception as e:  # the top level maps every failure to an exit code
        return failed(PROGRAM, e)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
