"""Hyperparameters: names, defaults, ranges, and parsing from the contract's strings.

Values arrive as strings (``spec.trainer.hyperparameters`` is a map of strings). Every name is
known here; an unknown name is a configuration error so that a typo (``learningrate``) fails at
once instead of silently training with the default.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Collection, Mapping

from .errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def env_name(name: str) -> str:
    """The ``FLYWHEEL_HP_<NAME>`` variable of a hyperparameter (``learningRate`` → ``FLYWHEEL_HP_LEARNINGRATE``)."""
    return "FLYWHEEL_HP_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


@dataclass(frozen=True)
class Hyperparameters:
    """The effective hyperparameters of a run (defaults filled in)."""

    method: str = "lora"
    learningRate: float = 2e-4
    epochs: int = 1
    maxSteps: int = 0
    batchSize: int = 8
    warmupRatio: float = 0.03
    weightDecay: float = 0.0
    maxGradNorm: float = 1.0
    loraRank: int = 16
    loraAlpha: float = 0.0  # 0 means 2 * loraRank
    loraDropout: float = 0.05
    targetModules: str = "all-linear"
    maxSeqLen: int = 1024
    dpoBeta: float = 0.1
    sftWeight: float = 1.0
    dpoWeight: float = 1.0
    seed: int = 42
    mergeAdapter: bool = False
    checkpointEvery: int = 100
    precision: str = "auto"
    gradientCheckpointing: bool = False
    logEvery: int = 10

    @property
    def lora_alpha(self) -> float:
        return self.loraAlpha if self.loraAlpha > 0 else 2.0 * self.loraRank

    @property
    def target_modules(self) -> str | list[str]:
        if self.targetModules == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.targetModules.split(",") if m.strip()]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class _Spec:
    parse: Callable[[str, str], Any]
    doc: str


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"hyperparameter {name}={raw!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ConfigError(f"hyperparameter {name}={value} is out of range [{lo}, {hi}]")
        return value

    return parse


def _float(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"hyperparameter {name}={raw!r} is not a number") from None
        below = value <= lo if lo_open else value < lo
        above = value >= hi if hi_open else value > hi
        if not math.isfinite(value) or below or above:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise ConfigError(f"hyperparameter {name}={raw.strip()} is out of range {interval}")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"hyperparameter {name}={raw!r} is not a boolean (true or false)")


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"hyperparameter {name}={raw!r} must be one of {', '.join(choices)}")
        return value

    return parse


def _modules(name: str, raw: str) -> str:
    value = raw.strip()
    if value == "all-linear":
        return value
    parts = [p.strip() for p in value.split(",")]
    if not parts or any(not re.fullmatch(r"[A-Za-z0-9_.]+", p) for p in parts):
        raise ConfigError(
            f"hyperparameter {name}={raw!r} must be all-linear or a comma-separated list of module names"
        )
    return ",".join(parts)


SPECS: dict[str, _Spec] = {
    "method": _Spec(_choice("lora"), "Fine-tuning method; only `lora` (a LoRA adapter via peft)."),
    "learningRate": _Spec(_float(0.0, 1.0, lo_open=True), "Peak AdamW learning rate, (0, 1]."),
    "epochs": _Spec(_int(1, 1000), "Passes over the training rows, 1..1000."),
    "maxSteps": _Spec(_int(0, 10_000_000), "When > 0, train exactly this many optimizer steps (as many epochs as that takes), overriding epochs; 0: epochs decide."),
    "batchSize": _Spec(_int(1, 4096), "Rows (SFT) or pairs (DPO) per optimizer step, 1..4096."),
    "warmupRatio": _Spec(_float(0.0, 0.5), "Fraction of steps of linear warm-up, then linear decay to 0, [0, 0.5]."),
    "weightDecay": _Spec(_float(0.0, 1.0), "AdamW weight decay, [0, 1]."),
    "maxGradNorm": _Spec(_float(0.0, 1000.0), "Gradient clipping norm; 0 disables, [0, 1000]."),
    "loraRank": _Spec(_int(1, 1024), "LoRA rank r, 1..1024."),
    "loraAlpha": _Spec(_float(0.0, 65536.0), "LoRA alpha; 0 (the default) means 2 * loraRank."),
    "loraDropout": _Spec(_float(0.0, 1.0, hi_open=True), "Dropout on the LoRA path, [0, 1)."),
    "targetModules": _Spec(_modules, "`all-linear` or a comma-separated list of module names (q_proj,v_proj)."),
    "maxSeqLen": _Spec(_int(8, 131072), "Longest sequence in tokens; longer rows lose the start of their prompt, 8..131072."),
    "dpoBeta": _Spec(_float(0.0, 100.0, lo_open=True), "DPO temperature beta, (0, 100]."),
    "sftWeight": _Spec(_float(0.0, 100.0), "Weight of the SFT loss, [0, 100]; 0 leaves the SFT rows out of training (they are still evaluated)."),
    "dpoWeight": _Spec(_float(0.0, 100.0), "Weight of the DPO loss, [0, 100]; 0 leaves the DPO pairs out of training (they are still evaluated)."),
    "seed": _Spec(_int(0, 2**32 - 1), "Seed of the shuffling, the adapter's initialization and dropout."),
    "mergeAdapter": _Spec(_bool, "Also write the merged model (base + adapter) to the output: true or false."),
    "checkpointEvery": _Spec(_int(0, 10_000_000), "Checkpoint every N steps to FLYWHEEL_CHECKPOINT_DIR; 0: only at the end of training."),
    "precision": _Spec(_choice("auto", "bf16", "fp32"), "`auto` (bf16 on a CUDA GPU that supports it, else fp32), `bf16` or `fp32`."),
    "gradientCheckpointing": _Spec(_bool, "Recompute activations in the backward pass to save memory: true or false."),
    "logEvery": _Spec(_int(1, 1_000_000), "Log a training line every N steps."),
}

# The names the evaluator (``python -m flywheel_trainer.evaluate``) takes: how the held-out rows
# are batched, truncated and computed. The rest only shape training.
EVALUATION_NAMES = ("batchSize", "maxSeqLen", "precision")


def _canonical(name: str, allowed: Collection[str]) -> str | None:
    """The allowed hyperparameter whose FLYWHEEL_HP_ variable name matches ``name``'s."""
    wanted = env_name(name)
    for known in allowed:
        if env_name(known) == wanted:
            return known
    return None


def _unknown(what: str, allowed: Collection[str], known_name: str | None) -> ConfigError:
    """An unknown name; when the name is one of the trainer's but the caller takes only some
    (the evaluator), say so."""
    names = ", ".join(sorted(allowed))
    if known_name is not None and known_name not in allowed:
        return ConfigError(f"{what}: {known_name} is a training hyperparameter; the evaluation takes only {names}")
    return ConfigError(f"{what}; known: {names}")


def parse_hyperparameters(raw: Mapping[str, str], allowed: Collection[str] = tuple(SPECS)) -> Hyperparameters:
    """Parse a map of strings into :class:`Hyperparameters`, checking names, types and ranges.

    ``allowed`` is the names the caller takes (the trainer all of :data:`SPECS`, the evaluator
    :data:`EVALUATION_NAMES`); any other name is a ConfigError. Names not given keep their
    defaults."""
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(f"hyperparameter {name} must be a string, got {type(value).__name__}")
        if name not in allowed:
            suggestion = _canonical(name, allowed) if name not in SPECS else None
            hint = f" (did you mean {suggestion}?)" if suggestion else ""
            raise _unknown(f"unknown hyperparameter {name!r}{hint}", allowed, name if name in SPECS else None)
        values[name] = SPECS[name].parse(name, value)
    return Hyperparameters(**values)


def hyperparameters_from_env(env: Mapping[str, str], allowed: Collection[str] = tuple(SPECS)) -> tuple[Hyperparameters, dict[str, str]]:
    """Read the hyperparameters from ``FLYWHEEL_HYPERPARAMETERS``, else from ``FLYWHEEL_HP_*``.

    The operator sets both with the same values; the JSON object is authoritative (it keeps the
    names' case). ``FLYWHEEL_HP_*`` alone is read when the JSON variable is unset, for runs by
    hand. Only the names in ``allowed`` are accepted. Returns the parsed values and the raw
    strings.
    """
    text = env.get("FLYWHEEL_HYPERPARAMETERS")
    raw: dict[str, str] = {}
    if text is not None and text.strip():
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"FLYWHEEL_HYPERPARAMETERS is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ConfigError("FLYWHEEL_HYPERPARAMETERS must be a JSON object of strings")
        for key, value in obj.items():
            if not isinstance(value, str):
                raise ConfigError(
                    f"FLYWHEEL_HYPERPARAMETERS: the value of {key!r} must be a string, got {json.dumps(value)}"
                )
            raw[key] = value
    else:
        for var, value in env.items():
            if not var.startswith("FLYWHEEL_HP_"):
                continue
            known = _canonical(var.removeprefix("FLYWHEEL_HP_"), allowed)
            if known is None or env_name(known) != var:
                raise _unknown(f"unknown hyperparameter variable {var}", allowed, _canonical(var.removeprefix("FLYWHEEL_HP_"), SPECS))
            raw[known] = value
    return parse_hyperparameters(raw, allowed), raw


def markdown_table() -> str:
    """The hyperparameters as a Markdown table (the README's table is generated from this)."""
    defaults = Hyperparameters()
    lines = ["| name | default | meaning |", "| --- | --- | --- |"]
    for name, spec in SPECS.items():
        default = getattr(defaults, name)
        shown = str(default).lower() if isinstance(default, bool) else f"{default:g}" if isinstance(default, float) else str(default)
        lines.append(f"| `{name}` | `{shown}` | {spec.doc} |")
    return "\n".join(lines)
