"""Loading models: the base model and its tokenizer, a candidate (a whole model or a PEFT
adapter on the base), the device and precision. Shared by the trainer and the evaluator.

torch, transformers and peft are imported inside the functions, so that importing this module
(as ``cli`` does before the configuration is checked) stays cheap.
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError, TransientError, is_out_of_memory


def _brief(e: BaseException, lines: int = 2, limit: int = 600) -> str:
    """An exception's message on one line: its first lines (torch's size mismatches list every
    tensor, one per line), at most ``limit`` characters."""
    parts = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(parts[:lines])
    if len(parts) > lines:
        text += f" ... ({len(parts) - lines} more lines)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _loading(variable: str, what: str, where: Path) -> Iterator[None]:
    """Turn a failure to load ``what`` from ``where`` into the contract's errors.

    transformers reports a missing or unreadable model file as a bare OSError; an OSError with
    an errno other than "no such file" is real I/O trouble and worth a retry (exit 75). A file
    that is there but not what it should be (bad JSON, a corrupt safetensors file, an adapter
    whose shapes do not fit the base) is bad configuration (exit 3): a retry reads the same
    bytes. Running out of memory stays what it is (exit 75)."""
    from safetensors import SafetensorError

    prefix = f"{variable}: cannot load {what} from {where}"
    try:
        yield
    except OSError as e:
        if e.errno not in (None, errno.ENOENT):
            raise TransientError(f"{variable}: reading {what} from {where}: {_brief(e)}") from e
        raise ConfigError(f"{prefix}: {_brief(e)}") from e
    except (ValueError, KeyError, SafetensorError) as e:
        raise ConfigError(f"{prefix}: {type(e).__name__}: {_brief(e)}") from e
    except RuntimeError as e:
        if is_out_of_memory(e):
            raise
        raise ConfigError(f"{prefix}: {type(e).__name__}: {_brief(e)}") from e


def device_and_precision(precision: str) -> tuple[Any, Any, Callable[[], contextlib.AbstractContextManager]]:
    """The device (the current CUDA GPU, else the CPU), the dtype to load models in, and the
    autocast context for forward passes, for the ``precision`` hyperparameter."""
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
    else:
        device = torch.device("cpu")
        bf16 = precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    if bf16:
        return device, dtype, lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return device, dtype, contextlib.nullcontext


def load_base(where: Path, dtype: Any) -> tuple[Any, Any]:
    """The base model's tokenizer and model, from FLYWHEEL_BASE_MODEL_URI's directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _loading("FLYWHEEL_BASE_MODEL_URI", "the base model", where):
        tokenizer = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=dtype, local_files_only=True)
    return tokenizer, model


def load_candidate_model(where: Path, dtype: Any, vocabulary: int) -> Any:
    """A candidate that is a whole model (artifact ``model``). It is fed the base tokenizer's
    ids, so its embedding must cover ``vocabulary`` of them."""
    from transformers import AutoModelForCausalLM

    with _loading("FLYWHEEL_CANDIDATE_DIR", "the candidate model", where):
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=dtype, local_files_only=True)
    rows = model.get_input_embeddings().num_embeddings
    if rows < vocabulary:
        raise ConfigError(
            f"FLYWHEEL_CANDIDATE_DIR: the candidate model in {where} has {rows} token embeddings, fewer than the "
            f"{vocabulary} tokens of the base model's tokenizer (is it a model of another base?)"
        )
    return model


def apply_adapter(base: Any, where: Path) -> Any:
    """The base model with the PEFT adapter in ``where`` applied (artifact ``adapter``), for
    inference; ``disable_adapter()`` on the result gives the base model back."""
    from peft import PeftModel

    with _loading("FLYWHEEL_CANDIDATE_DIR", "the candidate adapter", where):
        return PeftModel.from_pretrained(base, str(where), is_trainable=False)


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with: the pad token, else eos, else 0 (padding is masked)."""
    return next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
