"""Checkpoints in FLYWHEEL_CHECKPOINT_DIR, so that a retried or preempted run resumes.

Layout: ``<dir>/run-<fingerprint>/step-<NNNNNNNN>/`` holding the trainable (adapter) weights
(``adapter.safetensors``), the optimizer state (``optimizer.pt``), the random number generator
states (``rng.pt``) and the loop's counters (``state.json``). A checkpoint is written to a
``.partial`` directory and renamed into place, so a checkpoint that exists is complete. The
fingerprint hashes everything that decides the training (dataset sha256, hyperparameters, base
model config, formats), so checkpoints of a different run in the same directory are never
resumed from. The newest two checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger("flywheel_trainer")

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Checkpoint:
    step: int
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]
    path: Path


class CheckpointStore:
    def __init__(self, root: Path, run_fingerprint: str, keep: int = 2) -> None:
        self.dir = root / f"run-{run_fingerprint[:16]}"
        self.keep = keep

    def _complete(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = []
        for child in self.dir.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
        return sorted(found, reverse=True)

    def steps(self) -> list[int]:
        return [step for step, _ in self._complete()]

    def save(self, step: int, weights: dict[str, torch.Tensor], optimizer: dict[str, Any], rng: dict[str, Any], state: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step-{step:08d}"
        partial = self.dir / f"step-{step:08d}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(partial / "adapter.safetensors"))
        torch.save(optimizer, partial / "optimizer.pt")
        torch.save(rng, partial / "rng.pt")
        (partial / "state.json").write_text(json.dumps({**state, "step": step}, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for _, old in self._complete()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads; an unreadable one is skipped with a warning."""
        for step, path in self._complete():
            try:
                state = json.loads((path / "state.json").read_text())
                weights = load_file(str(path / "adapter.safetensors"))
                optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
                rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
            except (OSError, ValueError, RuntimeError, SafetensorError, json.JSONDecodeError) as e:
                log.warning("checkpoint %s is unreadable, trying an older one: %s", path, e)
                continue
            if state.get("step") != step:
                log.warning("checkpoint %s says step %s, skipping it", path, state.get("step"))
                continue
            return Checkpoint(step=step, weights=weights, optimizer=optimizer, rng=rng, state=state, path=path)
        return None
