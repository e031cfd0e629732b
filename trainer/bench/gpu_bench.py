"""GPU benchmark of the reference trainer, through the same code path as a RetrainJob.

It generates a feedback snapshot with a learnable pattern (see flywheel_trainer.synthetic),
builds a randomly initialized Llama-style causal LM from a config and a word-level tokenizer
(nothing is downloaded), saves them as the base model, sets the trainer contract's variables and
calls ``flywheel_trainer.cli.run`` (what ``python -m flywheel_trainer`` runs). It prints and
writes (to --out) the device, model size, steps, sequence lengths, batch size, tokens per
second, peak GPU memory and the held-out loss before and after training, and exits non-zero when
the held-out loss did not fall.

``--toy`` shrinks everything to run on a CPU in seconds (a check of the script itself).

Tokens per second counts the non-padding tokens of the training batches (chosen and rejected
sequences of DPO pairs both count; the reference model's forward pass on them is extra work not
counted) over the summed wall time of the optimizer steps, the device synchronized each step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel_trainer import synthetic  # noqa: E402
from flywheel_trainer.cli import run  # noqa: E402
from flywheel_trainer.dataset import load_snapshot  # noqa: E402
from flywheel_trainer.contract import DatasetLocation  # noqa: E402

SIZES = {
    # hidden, layers, heads, intermediate
    "gpu": (1024, 16, 16, 2816),
    "small": (256, 4, 4, 704),
    "toy": (64, 2, 4, 128),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toy", action="store_true", help="tiny model and dataset, for a CPU check of the script")
    ap.add_argument("--out", type=Path, default=None, help="directory for bench.log and bench.json")
    ap.add_argument("--model", choices=sorted(SIZES), default=None, help="model size (default: toy with --toy, else gpu)")
    ap.add_argument("--items", type=int, default=None, help="distinct items (rows = 6 phrasings x items)")
    ap.add_argument("--facts", type=int, default=None, help="facts in each prompt (sets the sequence length)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--learning-rate", type=str, default="1e-3")
    ap.add_argument("--lora-rank", type=str, default="16")
    args = ap.parse_args()

    toy = args.toy
    items = args.items or (30 if toy else 500)
    facts = args.facts if args.facts is not None else (8 if toy else 64)
    batch = args.batch_size or (8 if toy else 16)
    hidden, layers, heads, intermediate = SIZES[args.model or ("toy" if toy else "gpu")]
    out = args.out or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    out.mkdir(parents=True, exist_ok=True)

    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(out / "bench.log")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    log = logging.getLogger("bench")

    import torch

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-work-"))
    dataset = work / "snapshot"
    sha = synthetic.write_feedback_snapshot(dataset, n_items=items, context_facts=facts, heldout_fraction=0.05, seed=7)
    snap = load_snapshot(DatasetLocation(uri=str(dataset), local_dir=dataset), sha)
    log.info("dataset: %d SFT rows (%d held out), %d DPO pairs (%d held out)", len(snap.sft), len(snap.sft_heldout), len(snap.dpo), len(snap.dpo_heldout))

    tok = synthetic.build_tokenizer(items)
    model = synthetic.build_model(len(tok), hidden=hidden, layers=layers, heads=heads, intermediate=intermediate, max_positions=2048, seed=11)
    params = sum(p.numel() for p in model.parameters())
    base = work / "base"
    model.to(torch.bfloat16 if torch.cuda.is_available() else torch.float32).save_pretrained(str(base))
    tok.save_pretrained(str(base))
    del model
    log.info("base model: Llama-style, hidden %d, %d layers, %d heads, vocab %d: %.1f M parameters (random init), built in %.1f s",
             hidden, layers, heads, len(tok), params / 1e6, time.perf_counter() - started)

    hp = {
        "learningRate": args.learning_rate,
        "epochs": str(args.epochs),
        "batchSize": str(batch),
        "loraRank": args.lora_rank,
        "maxSeqLen": "1024",
        "checkpointEvery": "200",
        "logEvery": "25",
        "seed": "1",
    }
    if args.max_steps:
        hp["maxSteps"] = str(args.max_steps)
    env = {
        "FLYWHEEL_DATASET_URI": f"file://{dataset}",
        "FLYWHEEL_DATASET_SHA256": sha,
        "FLYWHEEL_DATASET_FORMATS": "SFT,DPO",
        "FLYWHEEL_BASE_MODEL_URI": str(base),
        "FLYWHEEL_BASE_VERSION": "bench",
        "FLYWHEEL_OUTPUT_URI": f"file://{work / 'output'}",
        "FLYWHEEL_HYPERPARAMETERS": json.dumps(hp),
        "FLYWHEEL_CHECKPOINT_DIR": str(work / "checkpoints"),
        "FLYWHEEL_TERMINATION_LOG": str(out / "termination-log"),
    }
    result = run(env)
    m = result["metrics"]

    from flywheel_trainer.formatting import ChatFormatter

    fmt = ChatFormatter(tok, 1024)
    lengths = [len(fmt.encode_sft(r).input_ids) for r in snap.sft[:500]]
    summary = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "modelParameters": params,
        "hidden": hidden,
        "layers": layers,
        "trainableParameters": m["trainableParameters"],
        "batchSize": batch,
        "steps": m["steps"],
        "sftRows": len(snap.sft),
        "dpoPairs": len(snap.dpo),
        "seqLenMedian": statistics.median(lengths),
        "seqLenMax": max(lengths),
        "trainTokens": m["trainTokens"],
        "trainSeconds": m["trainSeconds"],
        "tokensPerSecond": m["tokensPerSecond"],
        "peakGpuMemoryMib": m.get("peakGpuMemoryMib"),
        "evalLossBefore": m["evalLossBefore"],
        "evalLossAfter": m["evalLoss"],
        "preferenceAccuracyBefore": m.get("preferenceAccuracyBefore"),
        "preferenceAccuracyAfter": m.get("preferenceAccuracy"),
        "evalRewardAccuracy": m.get("evalRewardAccuracy"),
        "trainLoss": m.get("trainLoss"),
        "trainDpoLoss": m.get("trainDpoLoss"),
        "wallSeconds": time.perf_counter() - started,
    }
    (out / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    fell = m["evalLoss"] < m["evalLossBefore"]
    print(f"held-out loss {m['evalLossBefore']:.4f} -> {m['evalLoss']:.4f}: {'falling' if fell else 'NOT falling'}")
    return 0 if fell else 1


if __name__ == "__main__":
    sys.exit(main())
