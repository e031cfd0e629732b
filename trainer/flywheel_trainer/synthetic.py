"""Synthetic feedback, tokenizers and randomly initialized models, for tests and benchmarks.

Nothing here downloads anything: the tokenizer is a word-level ``tokenizers`` model over the
generated vocabulary, and the model is built from a config with random weights.

The feedback has a learnable pattern: every item has a fixed colour, a user asks for the colour
of an item in one of several phrasings, and the answer is ``the <item> is <colour> .``. Held-out
rows use (phrasing, item) combinations that no training row uses. DPO pairs prefer the right
colour over a wrong one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from .dataset import write_snapshot

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
PHRASINGS = [
    "what colour is the {item} ?",
    "tell me the colour of the {item} .",
    "which colour does the {item} have ?",
    "quick question : colour of the {item} ?",
    "i wonder what colour the {item} is .",
    "do you know the colour of the {item} ?",
]
SYSTEM = "you answer in one short sentence ."
MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]

# A chat template in the usual Jinja shape, for tokenizers built with one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def items(n: int) -> list[str]:
    return [f"item{i}" for i in range(n)]


def colour_of(item: str) -> str:
    return COLOURS[(int(item.removeprefix("item")) * 5 + 3) % len(COLOURS)]


def vocabulary(n_items: int) -> list[str]:
    words: set[str] = set(COLOURS) | set(items(n_items)) | set(SYSTEM.split()) | {"the", "is", "facts", ":", ";"}
    for p in PHRASINGS:
        words |= set(p.replace("{item}", "").split())
    return SPECIALS + MARKERS + sorted(words)


def build_tokenizer(n_items: int, chat_template: bool = True) -> Any:
    """A word-level PreTrainedTokenizerFast over the synthetic vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(n_items))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int | None = None, max_positions: int = 512, seed: int = 0) -> Any:
    """A randomly initialized Llama-style causal LM."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def write_base_model(directory: Path, n_items: int = 24, chat_template: bool = True, **model_args: Any) -> Path:
    tok = build_tokenizer(n_items, chat_template)
    model = build_model(len(tok), **model_args)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def _question(item: str, phrasing: str, context: list[str]) -> str:
    if not context:
        return phrasing.format(item=item)
    facts = " ; ".join(f"{other} is {colour_of(other)}" for other in context)
    return f"facts : {facts} ; {phrasing.format(item=item)}"


def _context(item: str, n_items: int, n_facts: int, rng: random.Random) -> list[str]:
    if n_facts <= 0:
        return []
    others = [o for o in rng.sample(items(n_items), min(n_items, n_facts)) if o != item][: n_facts - 1]
    others.insert(rng.randrange(len(others) + 1), item)
    return others


def _sft(item: str, phrasing: str, system: bool, context: list[str]) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    messages += [
        {"role": "user", "content": _question(item, phrasing, context)},
        {"role": "assistant", "content": f"the {item} is {colour_of(item)} ."},
    ]
    return {"messages": messages, "source": "correction", "interactionId": f"i-{item}-{PHRASINGS.index(phrasing)}", "version": "v1"}


def _dpo(item: str, phrasing: str, rng: random.Random, context: list[str]) -> dict:
    wrong = rng.choice([c for c in COLOURS if c != colour_of(item)])
    return {
        "prompt": [{"role": "user", "content": _question(item, phrasing, context)}],
        "chosen": [{"role": "assistant", "content": f"the {item} is {colour_of(item)} ."}],
        "rejected": [{"role": "assistant", "content": f"the {item} is {wrong} ."}],
        "source": "alternative",
        "interactionId": f"p-{item}-{PHRASINGS.index(phrasing)}",
        "version": "v1",
    }


def feedback_rows(n_items: int, heldout_fraction: float = 0.15, dpo: bool = True, seed: int = 0, repeat: int = 1, context_facts: int = 0) -> dict[str, list[dict]]:
    """SFT rows and DPO pairs for every (phrasing, item); a fraction of the combinations held out.

    ``repeat`` repeats the training rows (with the system prompt on or off), for bigger datasets.
    """
    rng = random.Random(seed)
    combos = [(item, p) for item in items(n_items) for p in PHRASINGS]
    rng.shuffle(combos)
    n_held = max(1, int(len(combos) * heldout_fraction))
    held, train = combos[:n_held], combos[n_held:]
    out: dict[str, list[dict]] = {"sft": [], "sft_heldout": [], "dpo": [], "dpo_heldout": []}
    for r in range(repeat):
        for i, (item, p) in enumerate(train):
            out["sft"].append(_sft(item, p, (i + r) % 2 == 0, _context(item, n_items, context_facts, rng)))
            if dpo:
                out["dpo"].append(_dpo(item, p, rng, _context(item, n_items, context_facts, rng)))
    for i, (item, p) in enumerate(held):
        out["sft_heldout"].append(_sft(item, p, i % 2 == 0, _context(item, n_items, context_facts, rng)))
        if dpo:
            out["dpo_heldout"].append(_dpo(item, p, rng, _context(item, n_items, context_facts, rng)))
    return out


def write_feedback_snapshot(directory: Path, n_items: int = 24, dpo: bool = True, seed: int = 0, repeat: int = 1, heldout_fraction: float = 0.15, context_facts: int = 0) -> str:
    rows = feedback_rows(n_items, heldout_fraction=heldout_fraction, dpo=dpo, seed=seed, repeat=repeat, context_facts=context_facts)
    return write_snapshot(
        directory, rows["sft"], rows["sft_heldout"], rows["dpo"], rows["dpo_heldout"],
        manifest={"id": "synthetic", "deployment": "synthetic", "recipe": {"formats": ["SFT", "DPO"] if dpo else ["SFT"]}},
    )
