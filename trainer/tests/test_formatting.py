"""Formatting: chat template or fallback, and loss only on the final assistant answer."""

from __future__ import annotations

import pytest

from flywheel_trainer import synthetic
from flywheel_trainer.dataset import DpoRow, SftRow
from flywheel_trainer.formatting import IGNORE_INDEX, ChatFormatter, fallback_render

SYSTEM = {"role": "system", "content": "you answer in one short sentence ."}
USER = {"role": "user", "content": "what colour is the item3 ?"}
ANSWER = {"role": "assistant", "content": "the item3 is blue ."}


@pytest.fixture(scope="module")
def templated():
    return synthetic.build_tokenizer(24, chat_template=True)


@pytest.fixture(scope="module")
def plain():
    return synthetic.build_tokenizer(24, chat_template=False)


def ids(tok, words: str) -> list[int]:
    return tok.convert_tokens_to_ids(words.split())


def test_chat_template_masks_everything_but_the_answer(templated) -> None:
    f = ChatFormatter(templated, 128)
    assert f.uses_chat_template
    ex = f.encode_sft(SftRow(messages=[SYSTEM, USER, ANSWER]))
    prompt = ids(templated, "<s> <|system|> you answer in one short sentence . <|end|> <|user|> what colour is the item3 ? <|end|> <|assistant|>")
    answer = ids(templated, "the item3 is blue . <|end|>")
    assert ex.input_ids == prompt + answer
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert ex.answer_tokens == len(answer)


def test_only_the_final_assistant_message_is_learned_in_a_multi_turn_conversation(templated) -> None:
    f = ChatFormatter(templated, 128)
    earlier = {"role": "assistant", "content": "the item1 is red ."}
    ex = f.encode_sft(SftRow(messages=[USER, earlier, USER, ANSWER]))
    learned = [t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert templated.convert_ids_to_tokens(learned) == "the item3 is blue . <|end|>".split()
    assert ex.input_ids.count(templated.convert_tokens_to_ids("red")) == 1  # in the prompt, masked


def test_fallback_template_when_the_tokenizer_has_none(plain) -> None:
    f = ChatFormatter(plain, 128)
    assert not f.uses_chat_template
    assert fallback_render([USER], add_generation_prompt=True) == "<|user|>\nwhat colour is the item3 ?\n<|assistant|>\n"
    ex = f.encode_sft(SftRow(messages=[SYSTEM, USER, ANSWER]))
    prompt = ids(plain, "<s> <|system|> you answer in one short sentence . <|user|> what colour is the item3 ? <|assistant|>")
    answer = ids(plain, "the item3 is blue . </s>")
    assert ex.input_ids == prompt + answer
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + answer


def test_long_rows_lose_the_start_of_the_prompt_not_the_answer(plain) -> None:
    f = ChatFormatter(plain, 10)
    ex = f.encode_sft(SftRow(messages=[SYSTEM, USER, ANSWER]))
    answer = ids(plain, "the item3 is blue . </s>")
    assert ex.input_ids == ids(plain, "the item3 ? <|assistant|>") + answer
    assert ex.labels == [IGNORE_INDEX] * 4 + answer


def test_an_answer_longer_than_max_seq_len_is_cut_at_its_end(plain) -> None:
    f = ChatFormatter(plain, 8)
    long_answer = {"role": "assistant", "content": " ".join(["blue"] * 20)}
    ex = f.encode_sft(SftRow(messages=[USER, long_answer]))
    assert ex.input_ids == ids(plain, "blue " * 8)
    assert ex.labels == ex.input_ids


def test_dpo_pairs_share_the_prompt_and_differ_in_the_answer(templated) -> None:
    f = ChatFormatter(templated, 128)
    wrong = {"role": "assistant", "content": "the item3 is red ."}
    pair = f.encode_pair(DpoRow(prompt=[USER], chosen=[ANSWER], rejected=[wrong]))
    prompt = ids(templated, "<s> <|user|> what colour is the item3 ? <|end|> <|assistant|>")
    assert pair.chosen.input_ids == prompt + ids(templated, "the item3 is blue . <|end|>")
    assert pair.rejected.input_ids == prompt + ids(templated, "the item3 is red . <|end|>")
    assert pair.chosen.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert pair.rejected.labels[len(prompt):] == ids(templated, "the item3 is red . <|end|>")
