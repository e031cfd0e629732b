"""``python -m flywheel_trainer.serve``: the OpenAI-compatible model server, on the tiny random model
and on the models the trainer itself writes."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from conftest import contract_env, run_trainer, subprocess_env

from flywheel_trainer.formatting import ChatFormatter
from flywheel_trainer.serve import MAX_BODY_BYTES, ModelHost, ServeConfig, make_server

CAP = 12  # the server's --max-new-tokens in these tests
QUESTION = [{"role": "system", "content": "you answer in one short sentence ."}, {"role": "user", "content": "what colour is the item3 ?"}]


# -- helpers -----------------------------------------------------------------------------------


def request(url: str, body: Any = None, method: str | None = None, raw: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request; ``body`` is sent as JSON."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method or ("GET" if data is None else "POST"), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def post_json(url: str, body: Any) -> tuple[int, Any]:
    status, _, data = request(url, body)
    return status, json.loads(data)


def chat(base: str, model: str = "tiny", messages: list[dict] | None = None, **fields: Any) -> tuple[int, Any]:
    return post_json(base + "/v1/chat/completions", {"model": model, "messages": messages or QUESTION, **fields})


def answer(base: str, model: str = "tiny", max_tokens: int = 8, **fields: Any) -> str:
    status, body = chat(base, model, max_tokens=max_tokens, **fields)
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


def events(data: bytes) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream."""
    text = data.decode()
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        out.append(block.removeprefix("data: "))
    return out


def error_of(status: int, body: Any, code: int, kind: str) -> str:
    assert status == code, body
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["type"] == kind, body
    return body["error"]["message"]


@pytest.fixture(scope="module")
def host(base_model: Path) -> ModelHost:
    return ModelHost.load(ServeConfig(base_model, "tiny", "127.0.0.1", 0, CAP))


@pytest.fixture(scope="module")
def base(host: ModelHost) -> Iterator[str]:
    """The server on the tiny base model, in this process on a free port."""
    server = make_server(host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def write_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter for the model in ``base_dir`` whose lora_B weights are random (not the
    zeros of a fresh adapter), so that it changes the model's answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # lora_A's initialization: the same adapter in every run
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapter(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(base_model, tmp_path_factory.mktemp("adapter") / "a", seed=7)


@pytest.fixture(scope="module")
def foreign_adapter(base_model_no_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter of another base (hidden size 32, not 64): its shapes do not fit."""
    return write_adapter(base_model_no_template, tmp_path_factory.mktemp("foreign") / "a", seed=8)


# -- the basics ----------------------------------------------------------------------------------


def test_health_and_the_model_list(base: str, base_model: Path) -> None:
    assert request(base + "/health")[::2] == (200, b"{}")
    status, kind, data = request(base + "/v1/models")
    assert status == 200 and kind == "application/json"
    listing = json.loads(data)
    assert listing["object"] == "list" and len(listing["data"]) == 1
    card = listing["data"][0]
    assert card["id"] == "tiny" and card["object"] == "model" and card["owned_by"] == "flywheel" and isinstance(card["created"], int)
    assert card["root"] == str(base_model)


def test_a_chat_completion_has_openais_shape_and_consistent_usage(base: str, host: ModelHost) -> None:
    status, body = chat(base, max_tokens=5, user="someone")
    assert status == 200, body
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == "tiny"
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length", "5 tokens of a random model, no end-of-sequence"
    tok = host.tokenizer
    rendered = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}
    assert len(tok(choice["message"]["content"], add_special_tokens=False)["input_ids"]) <= 5


def test_max_tokens_is_capped_by_the_server_and_max_completion_tokens_wins(base: str) -> None:
    status, body = chat(base, max_tokens=10_000)
    assert status == 200 and body["usage"]["completion_tokens"] == CAP
    status, body = chat(base, max_tokens=9, max_completion_tokens=3)
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_greedy_decoding_is_deterministic_and_a_seed_repeats_sampling(base: str) -> None:
    first = answer(base)
    assert first and answer(base) == first and answer(base, temperature=0) == first
    sampled = answer(base, temperature=1.5, top_p=0.9, seed=123)
    assert answer(base, temperature=1.5, top_p=0.9, seed=123) == sampled


def test_streaming_sends_the_greedy_answer_in_chunks_and_ends_with_done(base: str) -> None:
    whole = answer(base)
    status, kind, data = request(base + "/v1/chat/completions", {"model": "tiny", "messages": QUESTION, "max_tokens": 8, "stream": True,
                                                                  "stream_options": {"include_usage": True}})
    assert status == 200 and kind == "text/event-stream"
    payloads = events(data)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content, finish, usage = chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in content) == whole
    assert finish["choices"][0]["finish_reason"] == "length" and finish["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8


def test_a_stop_string_ends_the_answer_before_it(base: str) -> None:
    words = answer(base).split(" ")
    assert len(words) >= 3, words
    stop = " " + words[2]
    status, body = chat(base, max_tokens=8, stop=[stop, "never-said"])
    assert status == 200
    text = body["choices"][0]["message"]["content"]
    assert text == " ".join(words[:2]) and body["choices"][0]["finish_reason"] == "stop"
    status, data = request(base + "/v1/chat/completions", {"model": "tiny", "messages": QUESTION, "max_tokens": 8, "stop": stop, "stream": True})[::2]
    chunks = [json.loads(p) for p in events(data)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_text_completions(base: str) -> None:
    status, body = post_json(base + "/v1/completions", {"model": "tiny", "prompt": "the item3 is", "max_tokens": 4})
    assert status == 200, body
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["finish_reason"] == "length" and isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == 4


def test_a_tokenizer_without_a_chat_template_gets_the_trainers_fallback_prompt(base_model_no_template: Path) -> None:
    host = ModelHost.load(ServeConfig(base_model_no_template, "plain", "127.0.0.1", 0, 4))
    server = make_server(host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = chat(f"http://127.0.0.1:{server.server_address[1]}", "plain", max_tokens=2)
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == len(ChatFormatter(host.tokenizer, 4096).encode_prompt(QUESTION))
    assert host.tokenizer.chat_template is None


# -- errors --------------------------------------------------------------------------------------


def test_an_unknown_model_is_openais_404(base: str) -> None:
    status, body = chat(base, "x")
    assert error_of(status, body, 404, "NotFoundError") == "The model `x` does not exist."


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'{"model": "tiny"}', b'{"model": "tiny", "messages": []}', b'{"model": "tiny", "messages": [{"content": "hi"}]}',
     b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
     b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
     b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": 3}', b"\xff\xfe"],
)
def test_a_malformed_request_is_a_400_with_an_error_body(base: str, raw: bytes) -> None:
    status, _, data = request(base + "/v1/chat/completions", raw=raw)
    error_of(status, json.loads(data), 400, "BadRequestError")


def test_a_body_over_the_cap_is_413_and_unknown_routes_are_404_or_405(base: str) -> None:
    status, _, data = request(base + "/v1/chat/completions", raw=b" " * (MAX_BODY_BYTES + 1))
    error_of(status, json.loads(data), 413, "RequestTooLargeError")
    status, _, data = request(base + "/v1/nothing")
    error_of(status, json.loads(data), 404, "NotFoundError")
    status, _, data = request(base + "/v1/chat/completions", method="GET")
    error_of(status, json.loads(data), 405, "MethodNotAllowedError")
    assert request(base + "/health")[0] == 200, "still serving"


# -- adapters ------------------------------------------------------------------------------------


def load(base: str, name: str, path: Path | str, **extra: Any) -> tuple[int, bytes]:
    status, _, data = request(base + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), **extra})
    return status, data


def unload(base: str, name: str) -> tuple[int, bytes]:
    status, _, data = request(base + "/v1/unload_lora_adapter", {"lora_name": name})
    return status, data


def model_ids(base: str) -> list[str]:
    return [m["id"] for m in json.loads(request(base + "/v1/models")[2])["data"]]


def test_an_adapter_loads_answers_differently_and_unloads(base: str, adapter: Path) -> None:
    before = answer(base)
    assert load(base, "colours", adapter) == (200, b"Success: LoRA adapter 'colours' added successfully.")
    try:
        cards = json.loads(request(base + "/v1/models")[2])["data"]
        assert [c["id"] for c in cards] == ["tiny", "colours"]
        assert cards[1]["parent"] == "tiny" and cards[1]["root"] == str(adapter) and cards[1]["object"] == "model"
        adapted = answer(base, "colours")
        assert adapted and adapted != before, "random lora_B weights change the greedy answer"
        assert answer(base) == before, "the base name generates with the adapter off"
        assert answer(base, "colours") == adapted
        status, kind, _ = request(base + "/v1/chat/completions", {"model": "colours", "messages": QUESTION, "max_tokens": 3, "stream": True})
        assert status == 200 and kind == "text/event-stream"

        status, data = load(base, "colours", adapter)
        message = error_of(status, json.loads(data), 400, "InvalidUserInput")
        assert message.startswith("The lora adapter 'colours' has already been loaded.")
    finally:
        assert unload(base, "colours") == (200, b"Success: LoRA adapter 'colours' removed successfully.")
    assert model_ids(base) == ["tiny"]
    status, body = chat(base, "colours")
    assert error_of(status, body, 404, "NotFoundError") == "The model `colours` does not exist."
    assert answer(base) == before
    status, data = unload(base, "colours")
    assert error_of(status, json.loads(data), 404, "NotFoundError") == "The lora adapter 'colours' cannot be found."


def test_two_adapters_at_once_and_load_in_place(base: str, adapter: Path, tmp_path: Path) -> None:
    other = write_adapter(Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]), tmp_path / "b", seed=9)
    before = answer(base)
    assert load(base, "a", adapter)[0] == 200, "a name peft itself would refuse"
    try:
        assert load(base, "b.v2", other)[0] == 200, "a name with a dot"
        a, b = answer(base, "a"), answer(base, "b.v2")
        assert a and b and a != b and answer(base) == before
        assert unload(base, "b.v2")[0] == 200
        assert answer(base, "a") == a
        assert load(base, "a", other, load_inplace=True)[0] == 200
        assert answer(base, "a") == b, "'a' is now the other adapter"
    finally:
        for name in ("a", "b.v2"):
            unload(base, name)
    assert model_ids(base) == ["tiny"] and answer(base) == before


def test_adapter_requests_that_cannot_load_are_refused_and_change_nothing(base: str, adapter: Path, foreign_adapter: Path, tmp_path: Path) -> None:
    before = answer(base)
    status, data = load(base, "gone", tmp_path / "missing")
    assert "No adapter found" in error_of(status, json.loads(data), 404, "NotFoundError")
    status, data = load(base, "foreign", foreign_adapter)
    assert "does not fit the model" in error_of(status, json.loads(data), 400, "BadRequestError")
    status, data = load(base, "tiny", adapter)
    error_of(status, json.loads(data), 400, "InvalidUserInput")
    for bad in ({"lora_name": "x"}, {"lora_path": str(adapter)}, {}):
        status, _, data = request(base + "/v1/load_lora_adapter", bad)
        assert error_of(status, json.loads(data), 400, "InvalidUserInput") == "Both 'lora_name' and 'lora_path' must be provided."
    assert model_ids(base) == ["tiny"] and answer(base) == before

    # A failed load next to a loaded adapter leaves that one as it was.
    assert load(base, "ok", adapter)[0] == 200
    try:
        adapted = answer(base, "ok")
        assert load(base, "foreign", foreign_adapter)[0] == 400
        assert model_ids(base) == ["tiny", "ok"] and answer(base, "ok") == adapted and answer(base) == before
    finally:
        unload(base, "ok")


# -- the trainer's own output, served ----------------------------------------------------------------


class Served:
    """``python -m flywheel_trainer.serve`` as a subprocess on a free port."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flywheel_trainer.serve", "--host", "127.0.0.1", "--port", "0", *args],
            env=subprocess_env({}), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(300), "no 'listening' line within 300 s: " + "".join(self.lines[-20:])
        assert self.port, "".join(self.lines[-20:])
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("{") and '"event":"listening"' in line:
                self.port = json.loads(line)["port"]
                self.ready.set()
        self.ready.set()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith('{"method"')]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def train(tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], merge: bool) -> Path:
    dataset, sha = snapshot
    env = contract_env(tmp_path, base_model, dataset, sha, {"maxSteps": "2", "batchSize": "2", "learningRate": "1e-2", "mergeAdapter": str(merge).lower()})
    done = run_trainer(env)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "out"


def test_the_server_serves_a_merged_model_the_trainer_wrote_and_stops_cleanly_on_sigterm(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], base: str
) -> None:
    out = train(tmp_path, base_model, snapshot, merge=True)
    assert (out / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    served = Served("--model", str(out), "--max-new-tokens", "6")
    try:
        assert request(served.url + "/health")[::2] == (200, b"{}")
        assert model_ids(served.url) == ["out"], "the directory's name by default"
        status, body = chat(served.url, "out", max_tokens=100)
        assert status == 200, body
        assert body["usage"]["completion_tokens"] <= 6 and body["choices"][0]["finish_reason"] in ("stop", "length")

        # The merged model answers as the base with the trainer's adapter loaded at runtime.
        merged = answer(served.url, "out")
        assert load(base, "trained", out / "adapter")[0] == 200
        try:
            assert answer(base, "trained", max_tokens=6) == merged
        finally:
            unload(base, "trained")

        # SIGTERM while a request is in flight (its body half sent): the request is answered,
        # no new connection is accepted, and the server exits 0.
        payload = json.dumps({"model": "out", "messages": QUESTION, "max_tokens": 3}).encode()
        head = f"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", served.port), timeout=60) as conn:
            conn.sendall(head + payload[:10])
            time.sleep(1.0)  # the server accepts it and its handler waits for the rest
            served.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while True:  # wait until the listening socket is closed
                try:
                    socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "still accepting connections 30 s after SIGTERM"
                time.sleep(0.1)
            assert served.proc.poll() is None, "the request in flight holds the exit"
            conn.sendall(payload[10:])
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        status_line, _, rest = response.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.0 200"), response[:300]
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["object"] == "chat.completion"
        assert served.proc.wait(timeout=60) == 0, "".join(served.lines[-20:])
    finally:
        served.stop()

    records = served.records()
    assert {(r["method"], r["path"], r["status"]) for r in records} >= {("GET", "/health", 200), ("POST", "/v1/chat/completions", 200)}
    assert all(isinstance(r["ms"], (int, float)) for r in records)
    log = "".join(served.lines)
    assert "item3" not in log and "colour" not in log, "no message content in the log"
    assert '"event":"stopped"' in log


def test_an_adapter_the_trainer_wrote_loads_at_runtime_and_serves_as_a_model_dir(
    tmp_path: Path, base_model: Path, snapshot: tuple[Path, str], base: str
) -> None:
    out = train(tmp_path, base_model, snapshot, merge=False)
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    assert load(base, "v1-ft", out)[0] == 200
    try:
        assert "v1-ft" in model_ids(base)
        status, body = chat(base, "v1-ft", max_tokens=4)
        assert status == 200 and body["model"] == "v1-ft" and body["usage"]["completion_tokens"] == 4
        runtime = body["choices"][0]["message"]["content"]
    finally:
        assert unload(base, "v1-ft")[0] == 200

    # The adapter directory as --model: its base (from adapter_config.json) with it merged in,
    # answering as the base with the adapter loaded at runtime does.
    own = ModelHost.load(ServeConfig(out, "v1-ft", "127.0.0.1", 0, 4))
    server = make_server(own)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = chat(f"http://127.0.0.1:{server.server_address[1]}", "v1-ft", max_tokens=4)
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and body["choices"][0]["message"]["content"] == runtime
