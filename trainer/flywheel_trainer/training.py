"""The training loop: SFT and DPO steps on a LoRA adapter, evaluation, checkpoints.

One optimizer step takes one batch of a single kind: ``batchSize`` SFT rows (cross-entropy on
the answer tokens) or ``batchSize`` DPO pairs (the DPO loss against the reference model, which is
the base model with the adapter disabled). Each epoch shuffles the rows of each kind and then the
order of all batches, from ``seed`` and the epoch number alone, so step ``n`` is the same batch in
every run: a run that resumes from a checkpoint at step ``n`` continues with batch ``n``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .checkpoint import CheckpointStore
from .dataset import Snapshot
from .errors import Preempted, TrainingFailed
from .formatting import IGNORE_INDEX, ChatFormatter, Example, PairExample
from .hyperparameters import Hyperparameters

log = logging.getLogger("flywheel_trainer")

SFT, DPO = "sft", "dpo"


# ---------------------------------------------------------------------------------------------
# Encoding and batching


@dataclass
class Encoded:
    sft_train: list[Example] = field(default_factory=list)
    sft_eval: list[Example] = field(default_factory=list)
    dpo_train: list[PairExample] = field(default_factory=list)
    dpo_eval: list[PairExample] = field(default_factory=list)
    skipped: int = 0
    ignored: int = 0

    @property
    def eval_rows(self) -> int:
        """Held-out rows and pairs that are evaluated: the ``evalRows`` metric."""
        return len(self.sft_eval) + len(self.dpo_eval)


def encode_snapshot(snapshot: Snapshot, formatter: ChatFormatter, formats: Sequence[str]) -> Encoded:
    """Token ids of the rows of the requested formats; rows of other formats are ignored."""
    out = Encoded()
    if "SFT" in formats:
        for rows, dest in ((snapshot.sft, out.sft_train), (snapshot.sft_heldout, out.sft_eval)):
            for row in rows:
                ex = formatter.encode_sft(row)
                if ex is None:
                    out.skipped += 1
                else:
                    dest.append(ex)
    else:
        out.ignored += len(snapshot.sft) + len(snapshot.sft_heldout)
    if "DPO" in formats:
        for rows, dest in ((snapshot.dpo, out.dpo_train), (snapshot.dpo_heldout, out.dpo_eval)):
            for row in rows:
                pair = formatter.encode_pair(row)
                if pair is None:
                    out.skipped += 1
                else:
                    dest.append(pair)
    else:
        out.ignored += len(snapshot.dpo) + len(snapshot.dpo_heldout)
    return out


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


@dataclass(frozen=True)
class Plan:
    """Which batch each step trains on."""

    n_sft: int
    n_dpo: int
    batch_size: int
    seed: int
    total_steps: int

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n_sft / self.batch_size) + math.ceil(self.n_dpo / self.batch_size)

    def epoch(self, epoch: int) -> list[tuple[str, list[int]]]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        batches: list[tuple[str, list[int]]] = []
        for kind, n in ((SFT, self.n_sft), (DPO, self.n_dpo)):
            order = torch.randperm(n, generator=g).tolist()
            batches += [(kind, order[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffled]

    def steps_from(self, start: int) -> Iterator[tuple[int, str, list[int]]]:
        per_epoch = self.batches_per_epoch
        step = start
        while step < self.total_steps:
            epoch, index = divmod(step, per_epoch)
            batches = self.epoch(epoch)
            for kind, rows in batches[index:]:
                if step >= self.total_steps:
                    return
                yield step, kind, rows
                step += 1


def make_plan(encoded: Encoded, hp: Hyperparameters) -> Plan:
    n_sft = len(encoded.sft_train) if hp.sftWeight > 0 else 0
    n_dpo = len(encoded.dpo_train) if hp.dpoWeight > 0 else 0
    per_epoch = math.ceil(n_sft / hp.batchSize) + math.ceil(n_dpo / hp.batchSize)
    total = hp.maxSteps if hp.maxSteps > 0 else hp.epochs * per_epoch
    return Plan(n_sft=n_sft, n_dpo=n_dpo, batch_size=hp.batchSize, seed=hp.seed, total_steps=total if per_epoch else 0)


def learning_rate(hp: Hyperparameters, step: int, total: int) -> float:
    """Linear warm-up over warmupRatio of the steps, then linear decay to zero."""
    warmup = int(hp.warmupRatio * total)
    if step < warmup:
        return hp.learningRate * (step + 1) / warmup
    return hp.learningRate * max(0.0, (total - step) / max(1, total - warmup))


# ---------------------------------------------------------------------------------------------
# Losses


def token_losses(model: Any, batch: dict[str, torch.Tensor], autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy [B, T-1] (float32) and the mask of answer tokens."""
    with autocast():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return ce.view(targets.shape), (targets != IGNORE_INDEX)


def sequence_logps(model: Any, batch: dict[str, torch.Tensor], autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """Summed log-probability of each sequence's answer tokens [B]."""
    ce, mask = token_losses(model, batch, autocast)
    return -(ce * mask).sum(dim=-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPO loss (mean) and the per-pair reward margins."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin


# ---------------------------------------------------------------------------------------------
# Evaluation


def _by_length(items: Sequence[Any], length: Callable[[Any], int]) -> list[Any]:
    return sorted(items, key=length)


@torch.no_grad()
def eval_loss(model: Any, examples: Sequence[Example], batch_size: int, pad_id: int, device: torch.device, autocast) -> float:
    """Mean cross-entropy per answer token over the examples."""
    total, count = 0.0, 0
    ordered = _by_length(examples, lambda e: len(e.input_ids))
    for i in range(0, len(ordered), batch_size):
        ce, mask = token_losses(model, collate(ordered[i : i + batch_size], pad_id, device), autocast)
        total += float((ce * mask).sum())
        count += int(mask.sum())
    return total / max(1, count)


@torch.no_grad()
def pair_logps(model: Any, pairs: Sequence[PairExample], batch_size: int, pad_id: int, device: torch.device, autocast) -> list[tuple[float, float]]:
    """(log p(chosen answer), log p(rejected answer)) of each pair, in order."""
    out: list[tuple[float, float]] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = collate([p.chosen for p in chunk] + [p.rejected for p in chunk], pad_id, device)
        logps = sequence_logps(model, batch, autocast).tolist()
        out += list(zip(logps[: len(chunk)], logps[len(chunk) :]))
    return out


def evaluate(model: Any, encoded: Encoded, hp: Hyperparameters, pad_id: int, device: torch.device, autocast, reference: list[tuple[float, float]] | None = None) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """Held-out metrics of the model as it is now.

    ``evalLoss``: cross-entropy per answer token on the held-out SFT rows (on the chosen answers
    of the held-out DPO pairs when there are no SFT rows). ``preferenceAccuracy``: the fraction of
    held-out pairs whose chosen answer the model finds more likely than the rejected one. With
    ``reference`` (the base model's log-probabilities of the same pairs) also ``evalDpoLoss`` and
    ``evalRewardAccuracy`` (fraction of pairs with a positive DPO reward margin).
    Returns the metrics and the pairs' log-probabilities.
    """
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, float] = {}
        if encoded.sft_eval:
            metrics["evalLoss"] = eval_loss(model, encoded.sft_eval, hp.batchSize, pad_id, device, autocast)
        elif encoded.dpo_eval:
            metrics["evalLoss"] = eval_loss(model, [p.chosen for p in encoded.dpo_eval], hp.batchSize, pad_id, device, autocast)
        logps: list[tuple[float, float]] = []
        if encoded.dpo_eval:
            logps = pair_logps(model, encoded.dpo_eval, hp.batchSize, pad_id, device, autocast)
            metrics["preferenceAccuracy"] = sum(1 for c, r in logps if c > r) / len(logps)
            if reference is not None:
                pc = torch.tensor([c for c, _ in logps])
                pr = torch.tensor([r for _, r in logps])
                rc = torch.tensor([c for c, _ in reference])
                rr = torch.tensor([r for _, r in reference])
                loss, margin = dpo_loss(pc, pr, rc, rr, hp.dpoBeta)
                metrics["evalDpoLoss"] = float(loss)
                metrics["evalRewardAccuracy"] = float((margin > 0).float().mean())
        return metrics, logps
    finally:
        model.train(was_training)


# The metrics that are reported twice: as ``<name>Before`` for the base model and ``<name>`` for
# the candidate, on the same held-out rows.
COMPARED_METRICS = ("evalLoss", "preferenceAccuracy")


def with_before(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """The candidate's held-out metrics (``after``) and, as ``<name>Before``, the base model's
    (``before``) of :data:`COMPARED_METRICS`. The trainer and the evaluator both report these."""
    metrics = dict(after)
    for key in COMPARED_METRICS:
        if key in before:
            metrics[key + "Before"] = before[key]
    return metrics


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class RunState:
    """Counters a checkpoint carries so a resumed run reports the same figures."""

    step: int = 0
    sft_loss_sum: float = 0.0
    sft_steps: int = 0
    dpo_loss_sum: float = 0.0
    dpo_steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    resumed_from: int = -1
    before: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "RunState":
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        return cls(**known)


class Trainer:
    def __init__(
        self,
        model: Any,
        encoded: Encoded,
        hp: Hyperparameters,
        pad_id: int,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager],
        checkpoints: CheckpointStore | None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.model = model
        self.encoded = encoded
        self.hp = hp
        self.pad_id = pad_id
        self.device = device
        self.autocast = autocast
        self.checkpoints = checkpoints
        self.should_stop = should_stop
        self.plan = make_plan(encoded, hp)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([p for _, p in self.params], lr=hp.learningRate, weight_decay=hp.weightDecay)
        self.state = RunState()

    # -- checkpoints ----------------------------------------------------------------------------

    def _rng(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def save_checkpoint(self) -> None:
        if self.checkpoints is None:
            return
        path = self.checkpoints.save(
            self.state.step,
            {n: p for n, p in self.params},
            self.optimizer.state_dict(),
            self._rng(),
            self.state.to_json(),
        )
        log.info("checkpoint saved: %s", path)

    def resume(self) -> bool:
        """Load the newest checkpoint, if any; True when one was loaded."""
        if self.checkpoints is None:
            return False
        ckpt = self.checkpoints.load_latest()
        if ckpt is None:
            return False
        names = {n for n, _ in self.params}
        if set(ckpt.weights) != names:
            log.warning("checkpoint %s does not match this model's adapter, starting afresh", ckpt.path)
            return False
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(ckpt.weights[n].to(p.device, p.dtype))
        self.optimizer.load_state_dict(ckpt.optimizer)
        torch.set_rng_state(ckpt.rng["cpu"])
        if self.device.type == "cuda" and "cuda" in ckpt.rng:
            torch.cuda.set_rng_state(ckpt.rng["cuda"], self.device)
        self.state = RunState.from_json(ckpt.state)
        self.state.resumed_from = ckpt.step
        log.info("resumed from checkpoint %s at step %d of %d", ckpt.path, ckpt.step, self.plan.total_steps)
        return True

    # -- steps ----------------------------------------------------------------------------------

    def _sft_step(self, rows: list[int]) -> tuple[torch.Tensor, int]:
        batch = collate([self.encoded.sft_train[i] for i in rows], self.pad_id, self.device)
        ce, mask = token_losses(self.model, batch, self.autocast)
        loss = (ce * mask).sum() / mask.sum().clamp(min=1)
        return loss, int(batch["attention_mask"].sum())

    def _dpo_step(self, rows: list[int]) -> tuple[torch.Tensor, int]:
        pairs = [self.encoded.dpo_train[i] for i in rows]
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id, self.device)
        n = len(pairs)
        policy = sequence_logps(self.model, batch, self.autocast)
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                reference = sequence_logps(self.model, batch, self.autocast)
        finally:
            self.model.train()
        loss, _ = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.hp.dpoBeta)
        return loss, int(batch["attention_mask"].sum())

    def train(self) -> RunState:
        hp, plan, state = self.hp, self.plan, self.state
        self.model.train()
        if state.step >= plan.total_steps:
            log.info("training already complete at step %d", state.step)
            return state
        log.info(
            "training %d steps from step %d: %d SFT rows, %d DPO pairs, %d batches per epoch",
            plan.total_steps, state.step, plan.n_sft, plan.n_dpo, plan.batches_per_epoch,
        )
        window_start, window_tokens = time.perf_counter(), 0
        for step, kind, rows in plan.steps_from(state.step):
            if self.should_stop():
                self.save_checkpoint()
                raise Preempted(f"stopped at step {step} of {plan.total_steps}" + ("; checkpoint saved" if self.checkpoints else ""))
            started = time.perf_counter()
            lr = learning_rate(hp, step, plan.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if kind == SFT:
                loss, tokens = self._sft_step(rows)
                weighted = hp.sftWeight * loss
            else:
                loss, tokens = self._dpo_step(rows)
                weighted = hp.dpoWeight * loss
            weighted.backward()
            if hp.maxGradNorm > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in self.params], hp.maxGradNorm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingFailed(f"the {kind.upper()} loss is {value} at step {step} (try a lower learningRate)")
            if kind == SFT:
                state.sft_loss_sum += value
                state.sft_steps += 1
            else:
                state.dpo_loss_sum += value
                state.dpo_steps += 1
            state.tokens += tokens
            window_tokens += tokens
            state.step = step + 1
            # float(loss) above waited for the device, so this is the step's real duration.
            state.seconds += time.perf_counter() - started
            if state.step % hp.logEvery == 0 or state.step == plan.total_steps:
                elapsed = time.perf_counter() - window_start
                log.info(
                    "step %d/%d %s loss %.4f lr %.3g tokens/s %.0f",
                    state.step, plan.total_steps, kind, value, lr, window_tokens / max(elapsed, 1e-9),
                )
                window_start, window_tokens = time.perf_counter(), 0
            if hp.checkpointEvery and state.step % hp.checkpointEvery == 0 and state.step < plan.total_steps:
                self.save_checkpoint()
        self.save_checkpoint()
        return state
