"""Turning rows into token ids and labels.

A conversation is rendered with the tokenizer's chat template when it has one, else with the
fallback template below. The rendered text is split at the start of the final assistant answer:
the prompt part (every message before the answer, plus the template's generation prompt) and the
answer part (the answer and whatever the template puts after it, such as an end-of-turn token).
Both parts are tokenized separately and concatenated, so the boundary is exact; labels are the
token ids on the answer part and -100 (ignored by the loss) on the prompt part.

Fallback template, for tokenizers without a chat template::

    [bos]<|system|>\n{content}\n<|user|>\n{content}\n<|assistant|>\n{answer}[eos]

one ``<|role|>\n{content}\n`` block per message, the answer block without its trailing newline
and followed by the eos token when the tokenizer has one (so the model learns to stop); bos is
prepended when the tokenizer has one.

Sequences longer than ``maxSeqLen`` keep their answer: the prompt loses tokens from its start.
An answer alone longer than ``maxSeqLen`` is cut at its end. A row left with no answer token
(``maxSeqLen`` too small for it) is skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from jinja2 import TemplateError

from .dataset import DpoRow, Message, SftRow
from .errors import DatasetError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class PairExample:
    chosen: Example
    rejected: Example


def fallback_render(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    if add_generation_prompt:
        text += "<|assistant|>\n"
    return text


class ChatFormatter:
    """Formats conversations for one tokenizer."""

    def __init__(self, tokenizer: Any, max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))

    # -- rendering ------------------------------------------------------------------------------

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        if not self.uses_chat_template:
            return fallback_render(messages, add_generation_prompt)
        try:
            text = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except (TemplateError, ValueError, TypeError, KeyError, IndexError) as e:
            raise DatasetError(f"the tokenizer's chat template rejected a conversation: {type(e).__name__}: {e}") from e
        if not isinstance(text, str):
            raise DatasetError("the tokenizer's chat template did not render to text")
        return text

    def _split(self, messages: Sequence[Message]) -> tuple[str, str]:
        """(prompt text, answer text) of a conversation whose last message is the answer."""
        prompt = self._render(messages[:-1], add_generation_prompt=True)
        full = self._render(messages, add_generation_prompt=False)
        if not self.uses_chat_template:
            return prompt, full[len(prompt):].removesuffix("\n")
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        # A template whose generation prompt is not a prefix of the rendered answer: split at the
        # longest common prefix, so that only text the prompt also has is masked.
        common = 0
        for a, b in zip(prompt, full):
            if a != b:
                break
            common += 1
        return full[:common], full[common:]

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- encoding -------------------------------------------------------------------------------

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a conversation followed by the generation prompt, exactly the prompt part
        that ``encode`` trains on (the model server feeds it to generation); not truncated."""
        ids = self._ids(self._render(messages, add_generation_prompt=True))
        bos = self.tokenizer.bos_token_id
        if not self.uses_chat_template and bos is not None:
            ids = [bos, *ids]
        return ids

    def encode(self, messages: Sequence[Message]) -> Example | None:
        """Token ids and labels of a conversation; None when nothing of the answer fits."""
        prompt_text, answer_text = self._split(messages)
        prompt_ids = self._ids(prompt_text)
        answer_ids = self._ids(answer_text)
        if not self.uses_chat_template:
            bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
            if bos is not None:
                prompt_ids = [bos, *prompt_ids]
            if eos is not None:
                answer_ids = [*answer_ids, eos]
        answer_ids = answer_ids[: self.max_seq_len]
        if not answer_ids:
            return None
        room = self.max_seq_len - len(answer_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - room:] if room > 0 else []
        return Example(
            input_ids=prompt_ids + answer_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        )

    def encode_sft(self, row: SftRow) -> Example | None:
        return self.encode(row.messages)

    def encode_pair(self, row: DpoRow) -> PairExample | None:
        chosen = self.encode([*row.prompt, *row.chosen])
        rejected = self.encode([*row.prompt, *row.rejected])
        if chosen is None or rejected is None:
            return None
        return PairExample(chosen=chosen, rejected=rejected)
