"""``python -m flywheel_trainer.serve``: a small OpenAI-compatible model server, for tests and the demo.

It serves the model files the trainer writes (a merged model, a whole model, or a PEFT adapter
on its base) with the standard library's ``ThreadingHTTPServer`` and plain ``transformers``:

- ``GET /health``: 200 ``{}``. The server binds its port only after the model is loaded, so a
  connection that succeeds always finds the model ready (a refused connection means "not yet").
- ``GET /v1/models``: the served model and every loaded adapter (``parent``: the served model).
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI's request and response
  shapes, with ``"stream": true`` as server-sent events ending in ``data: [DONE]``.
- ``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``: vLLM's runtime adapter
  API (``{"lora_name", "lora_path"}``), with vLLM's messages and error types. A request whose
  ``model`` names a loaded adapter generates with that adapter; the served name, without any.

One model operation (a generation, an adapter load or unload) runs at a time, under one lock;
the others wait. Prompts are rendered exactly as the trainer renders its training prompts
(``formatting.ChatFormatter``). Greedy decoding unless ``temperature`` > 0. Every request is
logged as one JSON line on stderr (method, path, status, duration, model name), never with its
messages. SIGTERM stops accepting connections, lets the requests in flight finish, and exits 0.

Not a production server: no batching, no KV-cache reuse across requests, CPU-oriented (a CUDA
GPU is used when there is one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .dataset import Message
from .errors import DatasetError

MAX_BODY_BYTES = 1 << 20
DRAIN_BYTES = 16 << 20  # an oversized body up to this is read and dropped, so the 413 arrives
EXIT_OK, EXIT_BAD_CONFIG = 0, 3


# -- errors ------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered with OpenAI's (and vLLM's) error body:
    ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: HTTPStatus, message: str, kind: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or {
            HTTPStatus.NOT_FOUND: "NotFoundError",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "RequestTooLargeError",
            HTTPStatus.METHOD_NOT_ALLOWED: "MethodNotAllowedError",
            HTTPStatus.INTERNAL_SERVER_ERROR: "InternalServerError",
        }.get(status, "BadRequestError")
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": int(self.status)}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, param=param)


def no_such_model(name: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, f"The model `{name}` does not exist.", param="model")


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    model_dir: Path
    served_model_name: str
    host: str
    port: int
    max_new_tokens: int


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> ServeConfig:
    """Flags first, then ``FLYWHEEL_MODEL_DIR`` and ``PORT``; argparse exits 2 on a bad flag."""
    parser = argparse.ArgumentParser(prog="python -m flywheel_trainer.serve", description="OpenAI-compatible model server (tests, demo).")
    parser.add_argument("--model", default=env.get("FLYWHEEL_MODEL_DIR"), help="model directory (or FLYWHEEL_MODEL_DIR)")
    parser.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the directory's name)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(env.get("PORT") or 8000), help="0: any free port (default 8000, or PORT)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="cap on generated tokens per request (default 64)")
    args = parser.parse_args(list(argv))
    if not args.model:
        parser.error("--model (or FLYWHEEL_MODEL_DIR) is required")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    model_dir = Path(args.model).expanduser().resolve()
    return ServeConfig(model_dir, args.served_model_name or model_dir.name, args.host, args.port, args.max_new_tokens)


# -- generation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: greedy when ``temperature`` is 0."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def pick_token(logits: Any, sampling: Sampling, generator: Any) -> int:
    """The next token id from the last position's logits (greedy, or temperature + top-p)."""
    import torch

    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _earliest_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


class TokenStream:
    """One generation, token by token with the KV cache: iterating yields the new text as it
    becomes final (text that might still turn into a stop string, or an incomplete character, is
    held back). After iteration, ``text`` is the whole answer (the deltas joined),
    ``completion_tokens`` the tokens generated (an end-of-sequence token included) and
    ``finish_reason`` ``stop`` or ``length``."""

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: list[int], sampling: Sampling, eos_ids: set[int], device: Any) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.prompt_ids, self.sampling, self.eos_ids = prompt_ids, sampling, eos_ids
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason = "length"
        self.text = ""

    def _emit(self, text: str, final: bool) -> str:
        """The part of ``text`` (the decoded answer so far) that can be sent now."""
        if not text.startswith(self.text):
            return ""  # a decoder that rewrote earlier text: wait for it to settle
        end = len(text)
        if not final:
            end -= max((len(s) for s in self.sampling.stop), default=1) - 1
            while end > len(self.text) and text[end - 1] == "\ufffd":
                end -= 1
        delta = text[len(self.text):end] if end > len(self.text) else ""
        self.text += delta
        return delta

    def __iter__(self) -> Iterator[str]:
        import torch

        generator = torch.Generator(device=self.device)
        if self.sampling.seed is not None:
            generator.manual_seed(self.sampling.seed)
        else:
            generator.seed()
        inputs = torch.tensor([self.prompt_ids], device=self.device)
        cache: Any = None  # transformers 5's name for the KV cache (past_key_values before)
        tokens: list[int] = []
        text = ""
        for _ in range(self.sampling.max_new_tokens):
            out = self.model(input_ids=inputs, cache=cache, use_cache=True)
            cache = out.cache
            token = pick_token(out.logits[0, -1], self.sampling, generator)
            self.completion_tokens += 1
            if token in self.eos_ids:
                self.finish_reason = "stop"
                break
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = _earliest_stop(text, self.sampling.stop)
            if cut is not None:
                text, self.finish_reason = text[:cut], "stop"
                break
            delta = self._emit(text, final=False)
            if delta:
                yield delta
            inputs = torch.tensor([[token]], device=self.device)
        delta = self._emit(text, final=True)
        if delta:
            yield delta


# -- the model and its adapters ------------------------------------------------------------------


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _adapter_base_dir(adapter_dir: Path) -> Path:
    """The base model directory an adapter directory names (``base_model_name_or_path``)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    path = Path(base).expanduser()
    if not path.is_absolute() and not path.is_dir():
        path = adapter_dir / path
    if not path.is_dir():
        raise ValueError(f"the adapter in {adapter_dir} names the base model {base}, which is not a local directory")
    return path


def load_model(model_dir: Path, device: Any, dtype: Any) -> tuple[Any, Any]:
    """The tokenizer and model of ``model_dir``: a transformers model directory, or a PEFT adapter
    directory (its base, from the adapter's config, with the adapter merged in; the tokenizer is
    the adapter directory's when it has one, as the trainer writes it, else the base's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not model_dir.is_dir():
        raise ValueError(f"{model_dir} is not a directory")
    weights_dir = model_dir
    adapter = (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file()
    if adapter:
        weights_dir = _adapter_base_dir(model_dir)
    has_tokenizer = any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir if has_tokenizer else weights_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=dtype, local_files_only=True)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir), is_trainable=False).merge_and_unload()
    return tokenizer, model.to(device).eval()


@dataclass
class AdapterInfo:
    """A loaded adapter: its API name, the path it came from, and its name inside peft (a
    counter: peft's own names must not contain dots or be part of its ``lora_`` prefix)."""

    name: str
    path: str
    created: int
    key: str


@dataclass
class ModelHost:
    """The served model, its tokenizer and its loaded LoRA adapters. Every method that runs the
    model or changes it holds ``lock``: one operation at a time."""

    name: str
    model_dir: Path
    tokenizer: Any
    model: Any
    device: Any
    max_new_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    peft: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    loads: int = 0

    def __post_init__(self) -> None:
        from .formatting import ChatFormatter

        self.formatter = ChatFormatter(self.tokenizer, max_seq_len=1 << 30)
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self.max_model_len = getattr(self.model.config, "max_position_embeddings", None)

    @classmethod
    def load(cls, config: ServeConfig) -> "ModelHost":
        from .models import device_and_precision

        device, dtype, _ = device_and_precision("auto")
        tokenizer, model = load_model(config.model_dir, device, dtype)
        return cls(config.served_model_name, config.model_dir, tokenizer, model, device, config.max_new_tokens)

    # -- listing -------------------------------------------------------------------------------

    def known(self, name: str) -> bool:
        return name == self.name or name in self.adapters

    def model_cards(self) -> list[dict[str, Any]]:
        """``/v1/models``' data: the served model, then the adapters (as vLLM lists them)."""
        cards = [{"id": self.name, "object": "model", "created": self.created, "owned_by": "flywheel",
                  "root": str(self.model_dir), "parent": None, "max_model_len": self.max_model_len}]
        cards += [{"id": a.name, "object": "model", "created": a.created, "owned_by": "flywheel",
                   "root": a.path, "parent": self.name} for a in self.adapters.values()]
        return cards

    # -- adapters ------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str, in_place: bool = False) -> None:
        """Load the LoRA adapter in ``path`` as ``name`` (vLLM's checks and messages)."""
        if name == self.name:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"The lora adapter name '{name}' conflicts with the served base model.", "InvalidUserInput", "lora_name")
        where = Path(path).expanduser()
        with self.lock:
            if name in self.adapters and not in_place:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True.",
                    "InvalidUserInput", "lora_name",
                )
            if not (where / "adapter_config.json").is_file():
                raise ApiError(HTTPStatus.NOT_FOUND, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", "lora_path")
            config = self._adapter_config(name, where)
            if name in self.adapters:
                with _quiet_peft():
                    self._remove(name)
            self.loads += 1
            key = f"adapter{self.loads}"
            with _quiet_peft():
                self._attach(name, key, where, config)
            # Replaced, never changed in place: /v1/models reads it without the lock.
            self.adapters = {**self.adapters, name: AdapterInfo(name, path, int(time.time()), key)}

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                raise ApiError(HTTPStatus.NOT_FOUND, f"The lora adapter '{name}' cannot be found.", "NotFoundError", "lora_name")
            with _quiet_peft():
                self._remove(name)

    def _adapter_config(self, name: str, where: Path) -> Any:
        from peft import PeftConfig

        try:
            config = PeftConfig.from_pretrained(str(where))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise bad_request(f"Loading lora {name} failed: the adapter config in {where} is not valid: {_brief(e)}", "lora_path") from e
        if str(getattr(config, "peft_type", "")).upper().split(".")[-1] != "LORA":
            raise bad_request(f"Loading lora {name} failed: {where} holds a {config.peft_type} adapter, not a LoRA adapter", "lora_path")
        config.inference_mode = True
        return config

    def _attach(self, name: str, key: str, where: Path, config: Any) -> None:
        """Inject and load the adapter as ``key``; on failure the model is as it was."""
        from peft import get_peft_model

        created = self.peft is None
        try:
            if created:
                self.peft = get_peft_model(self.model, config, adapter_name=key)
            self.peft.load_adapter(str(where), adapter_name=key, is_trainable=False)
            self.peft.eval()
        except Exception as e:  # noqa: BLE001 - any failure leaves the model unchanged and is the client's
            self._discard(key, created)
            raise bad_request(f"Loading lora {name} failed: the adapter in {where} does not fit the model: {type(e).__name__}: {_brief(e)}", "lora_path") from e

    def _discard(self, key: str, created: bool) -> None:
        """Undo a failed ``_attach``."""
        if self.peft is None:
            return
        if created or set(self.peft.peft_config) <= {key}:
            self.model = self.peft.unload().eval()
            self.peft = None
        elif key in self.peft.peft_config:
            self.peft.delete_adapter(key)

    def _remove(self, name: str) -> None:
        """Drop a loaded adapter; without adapters left, the plain model again."""
        key = self.adapters[name].key
        self.adapters = {n: a for n, a in self.adapters.items() if n != name}
        if set(self.peft.peft_config) <= {key}:
            self.model = self.peft.unload().eval()
            self.peft = None
        else:
            self.peft.delete_adapter(key)

    # -- generation ----------------------------------------------------------------------------

    def _encode(self, messages: list[Message] | None, prompt: str | None) -> list[int]:
        if messages is not None:
            try:
                return self.formatter.encode_prompt(messages)
            except DatasetError as e:
                raise bad_request(str(e), "messages") from e
        return list(self.tokenizer(prompt or "", add_special_tokens=True)["input_ids"])

    @contextlib.contextmanager
    def _selected(self, name: str) -> Iterator[Any]:
        """The module to run for the model ``name``: the adapter active, or all adapters off."""
        if name in self.adapters:
            self.peft.set_adapter(self.adapters[name].key, inference_mode=True)
            yield self.peft
        elif name != self.name:
            raise no_such_model(name)
        elif self.peft is not None:
            with self.peft.disable_adapter():
                yield self.peft
        else:
            yield self.model

    @contextlib.contextmanager
    def generation(self, name: str, sampling: Sampling, messages: list[Message] | None = None, prompt: str | None = None) -> Iterator[TokenStream]:
        """Hold the lock, select the model and yield the generation to iterate (in this thread)."""
        import torch

        with self.lock, torch.inference_mode(), self._selected(name) as model:
            ids = self._encode(messages, prompt)
            limit = min(sampling.max_new_tokens, self.max_new_tokens)
            if self.max_model_len:
                if len(ids) >= self.max_model_len:
                    raise bad_request(
                        f"This model's maximum context length is {self.max_model_len} tokens. However, your request has {len(ids)} input tokens.",
                        "messages" if messages is not None else "prompt",
                    )
                limit = min(limit, self.max_model_len - len(ids))
            if not ids:
                raise bad_request("the prompt is empty", "prompt")
            capped = Sampling(limit, sampling.temperature, sampling.top_p, sampling.seed, sampling.stop)
            yield TokenStream(model, self.tokenizer, ids, capped, self.eos_ids, self.device)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft's UserWarnings on adapter changes (which adapter is active now, a base path renamed
    in a config) say nothing to a client and would clutter the request log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _brief(e: BaseException, limit: int = 300) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    """A validated chat (``messages``) or text (``prompt``) completion request."""

    model: str
    sampling: Sampling
    stream: bool
    include_usage: bool
    messages: list[Message] | None = None
    prompt: str | None = None


def _int(body: Mapping[str, Any], name: str, minimum: int, maximum: int = sys.maxsize) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise bad_request(f"'{name}' must be an integer in [{minimum}, {maximum}]", name)
    return value


def _number(body: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise bad_request(f"'{name}' must be a number in [{low}, {high}]", name)
    return float(value)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise bad_request("'stop' must be a string or a list of strings", "stop")


def _content(value: Any) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise bad_request("a message's 'content' must be a string or a list of text parts", "messages")


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list of messages", "messages")
    out: list[Message] = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise bad_request("every message needs a 'role' (a string) and a 'content'", "messages")
        out.append({"role": m["role"], "content": _content(m.get("content") if m.get("content") is not None else "")})
    return out


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise bad_request("'prompt' must be a non-empty string", "prompt")
    return value


def parse_generation(body: Any, default_model: str, chat: bool) -> GenerationRequest:
    """Validate a ``/v1/chat/completions`` (``chat``) or ``/v1/completions`` body."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a string", "model")
    if body.get("n") not in (None, 1):
        raise bad_request("only 'n': 1 is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    limit = _int(body, "max_completion_tokens", 1) if chat else None
    limit = limit or _int(body, "max_tokens", 1)
    sampling = Sampling(
        max_new_tokens=limit or sys.maxsize,
        temperature=_number(body, "temperature", 0.0, 2.0, 0.0),
        top_p=_number(body, "top_p", 1e-9, 1.0, 1.0),
        seed=_int(body, "seed", -(1 << 63), (1 << 64) - 1),  # what torch's generator takes
        stop=_stops(body.get("stop")),
    )
    common = dict(model=model, sampling=sampling, stream=stream, include_usage=bool(options.get("include_usage")))
    if chat:
        return GenerationRequest(messages=_messages(body.get("messages")), **common)
    return GenerationRequest(prompt=_prompt(body.get("prompt")), **common)


# -- HTTP --------------------------------------------------------------------------------------


def _log(record: Mapping[str, Any]) -> None:
    sys.stderr.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    """Routes the API onto the server's ``ModelHost``. HTTP/1.0: one request per connection."""

    server: "ModelServer"
    server_version = "flywheel-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Silence the base class's access log; ``_logged`` writes one JSON line instead."""

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    # -- plumbing ------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self._logged({"/health": self._health, "/v1/models": self._models})

    def do_POST(self) -> None:  # noqa: N802
        self._logged({
            "/v1/chat/completions": lambda: self._generate(chat=True),
            "/v1/completions": lambda: self._generate(chat=False),
            "/v1/load_lora_adapter": self._load_adapter,
            "/v1/unload_lora_adapter": self._unload_adapter,
        })

    GET_PATHS = frozenset({"/health", "/v1/models"})
    POST_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"})

    def _logged(self, routes: Mapping[str, Callable[[], None]]) -> None:
        """Run the route, answer any failure with an error body, and log the request."""
        started = time.perf_counter()
        self._status, self._model = 0, None
        path = self.path.split("?", 1)[0]
        try:
            route = routes.get(path)
            if route is None:
                if path in self.GET_PATHS | self.POST_PATHS:
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed on {path}")
                raise ApiError(HTTPStatus.NOT_FOUND, f"no route {path}")
            route()
        except ApiError as e:
            self._answer_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a failure is answered, never the server's end
            _log({"event": "error", "path": path, "error": type(e).__name__})
            self._answer_error(ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}"))
        finally:
            _log({"method": self.command, "path": path, "status": self._status,
                  "ms": round((time.perf_counter() - started) * 1000, 1), "model": self._model})

    def _answer_error(self, e: ApiError) -> None:
        if self._status:  # the response has started (a stream): nothing more can be said
            self.close_connection = True
            return
        with contextlib.suppress(OSError):
            self._send_json(e.status, e.body())

    def _send_json(self, status: int, obj: Any) -> None:
        self._send_bytes(status, json.dumps(obj).encode(), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        """The request's JSON body: 413 over the cap, 400 when it is not JSON."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "a request body needs a Content-Length", "BadRequestError")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise bad_request("a bad Content-Length") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._drain(length)
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is over {MAX_BODY_BYTES} bytes")
        data = self.rfile.read(length) if length > 0 else b""
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request("the request body is not valid JSON") from None

    def _drain(self, length: int) -> None:
        """Read and drop up to ``DRAIN_BYTES`` of a refused body: closing a socket with unread
        data resets the connection, and the client could lose the answer."""
        left = min(length, DRAIN_BYTES)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    # -- routes --------------------------------------------------------------------------------

    def _health(self) -> None:
        self._send_json(200, {})

    def _models(self) -> None:
        self._send_json(200, {"object": "list", "data": self.server.host.model_cards()})

    def _lora_field(self, body: Any, name: str) -> str:
        value = body.get(name) if isinstance(body, dict) else None
        return value if isinstance(value, str) else ""

    def _load_adapter(self) -> None:
        body = self._body()
        name, path = self._lora_field(body, "lora_name"), self._lora_field(body, "lora_path")
        self._model = name or None
        if not name or not path:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        self.server.host.load_adapter(name, path, in_place=body.get("load_inplace") is True)
        self._send_bytes(200, f"Success: LoRA adapter '{name}' added successfully.".encode(), "text/plain; charset=utf-8")

    def _unload_adapter(self) -> None:
        body = self._body()
        name = self._lora_field(body, "lora_name")
        self._model = name or None
        if not name:
            raise ApiError(HTTPStatus.BAD_REQUEST, "'lora_name' needs to be provided.", "InvalidUserInput")
        self.server.host.unload_adapter(name)
        self._send_bytes(200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), "text/plain; charset=utf-8")

    def _generate(self, chat: bool) -> None:
        host = self.server.host
        request = parse_generation(self._body(), host.name, chat)
        self._model = request.model
        if not host.known(request.model):
            raise no_such_model(request.model)
        answer = _ChatAnswer(request.model) if chat else _TextAnswer(request.model)
        with host.generation(request.model, request.sampling, request.messages, request.prompt) as stream:
            if request.stream:
                self._stream(stream, answer, request.include_usage)
            else:
                for _ in stream:
                    pass
                self._send_json(200, answer.whole(stream))

    def _stream(self, stream: TokenStream, answer: "_Answer", include_usage: bool) -> None:
        """Server-sent events: the opening chunk, a chunk per delta, the finish, [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.close_connection = True
        opening = answer.opening()
        if opening is not None:
            self._event(opening)
        for delta in stream:
            self._event(answer.chunk(delta, None))
        self._event(answer.chunk(None, stream.finish_reason))
        if include_usage:
            self._event(answer.usage_chunk(stream))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, obj: Any) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()


def _usage(stream: TokenStream) -> dict[str, int]:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}


class _Answer:
    """The response objects of one completion, in OpenAI's shapes."""

    prefix, whole_object, chunk_object = "", "", ""

    def __init__(self, model: str) -> None:
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def opening(self) -> dict[str, Any] | None:
        return None

    def choice(self, text: str | None, finish: str | None, whole: bool) -> dict[str, Any]:
        raise NotImplementedError

    def whole(self, stream: TokenStream) -> dict[str, Any]:
        return {**self._base(self.whole_object), "choices": [self.choice(stream.text, stream.finish_reason, True)], "usage": _usage(stream)}

    def chunk(self, text: str | None, finish: str | None) -> dict[str, Any]:
        return {**self._base(self.chunk_object), "choices": [self.choice(text, finish, False)]}

    def usage_chunk(self, stream: TokenStream) -> dict[str, Any]:
        return {**self._base(self.chunk_object), "choices": [], "usage": _usage(stream)}


class _ChatAnswer(_Answer):
    prefix, whole_object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def opening(self) -> dict[str, Any]:
        return {**self._base(self.chunk_object), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}

    def choice(self, text: str | None, finish: str | None, whole: bool) -> dict[str, Any]:
        if whole:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None, "finish_reason": finish}


class _TextAnswer(_Answer):
    prefix, whole_object, chunk_object = "cmpl", "text_completion", "text_completion"

    def choice(self, text: str | None, finish: str | None, whole: bool) -> dict[str, Any]:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}


class ModelServer(ThreadingHTTPServer):
    """A thread per request; closing waits for the requests in flight (non-daemon threads)."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], host: ModelHost) -> None:
        super().__init__(address, Handler)
        self.host = host


def make_server(host: ModelHost, address: str = "127.0.0.1", port: int = 0) -> ModelServer:
    return ModelServer((address, port), host)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv, os.environ)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        host = ModelHost.load(config)
    except Exception as e:  # noqa: BLE001 - any load failure is the configuration's
        _log({"event": "failed", "model": str(config.model_dir), "error": f"{type(e).__name__}: {_brief(e, 600)}"})
        return EXIT_BAD_CONFIG
    server = make_server(host, config.host, config.port)

    def terminate(signum: int, _frame: Any) -> None:
        _log({"event": "stopping", "signal": signal.Signals(signum).name})
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    _log({"event": "listening", "host": config.host, "port": server.server_address[1], "model": host.name,
          "device": str(host.device), "maxNewTokens": host.max_new_tokens})
    try:
        server.serve_forever()
    finally:
        server.server_close()  # waits for the requests in flight
    _log({"event": "stopped"})
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
