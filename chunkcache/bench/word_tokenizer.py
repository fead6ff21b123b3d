"""A tokenizer-free stand-in tokenizer for random-weight models (the in-process GPU serving benchmark).

A random-weight Llama-3-8B-shaped model has no tokenizer, and its vocabulary (128,256 ids) is larger than
any packaged tokenizer's, so the ids it generates could not be decoded by one. Timing does not depend on
which ids a prompt holds, only on how many and on which of them repeat, so this tokenizer maps every word
(a run of non-space characters) to a fixed id by hashing it. ``"\n\n"`` and ``"\n"`` have fixed ids of
their own, so the engine's plain-prompt matcher finds blank lines (paragraph boundaries) as it does with a
real tokenizer; the special token texts (``<s>`` ...) map to their ids. The same text always
gives the same ids, a passage tokenized alone gives exactly the ids it has inside a larger prompt (token
boundaries are whitespace), and so the serving trace keeps its Zipf reuse structure in token space. Prompts
come out at about one id per word, i.e. around 0.75x the length a BPE tokenizer would give.

It implements the parts of the Hugging Face tokenizer interface the engine uses: calling it, ``encode``,
``decode``, ``batch_decode``, ``len``, ``apply_chat_template`` (a plain role-tagged format that starts with
``<s>``, as Llama 3's writes its BOS) and the special token ids.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_TOKEN = re.compile(r"<s>|</s>|<pad>|\n\n|\n|[^\s]+")  # special texts first, so "<s><|user|>" splits
PAD, BOS, EOS, NEWLINE, BLANK_LINE = 0, 1, 2, 3, 4
_SPECIAL = {PAD: "<pad>", BOS: "<s>", EOS: "</s>"}
_FIXED = {**_SPECIAL, NEWLINE: "\n", BLANK_LINE: "\n\n"}
_FIXED_IDS = {text: i for i, text in _FIXED.items()}


@dataclass
class Encoding:
    """What calling a Hugging Face tokenizer returns, reduced to ``input_ids``."""

    input_ids: list[int]

    def __getitem__(self, key: str) -> list[int]:
        if key != "input_ids":
            raise KeyError(key)
        return self.input_ids


class WordTokenizer:
    """Hashes words to ids in ``[5, vocab_size)``; ids 0-4 are pad, BOS, EOS, newline and blank line (see
    module docstring)."""

    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS
    pad_token, bos_token, eos_token = _SPECIAL[PAD], _SPECIAL[BOS], _SPECIAL[EOS]
    chat_template = "<s><|role|>\\ncontent\\n<|end|>"  # informative only; apply_chat_template implements it

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1000:
            raise ValueError("vocab_size must be at least 1000 so that word hashes rarely collide")
        self.vocab_size = vocab_size
        self._words: dict[int, str] = {}

    def __len__(self) -> int:
        return self.vocab_size

    def _id(self, word: str) -> int:
        if word in _FIXED_IDS:
            return _FIXED_IDS[word]
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        i = len(_FIXED) + h % (self.vocab_size - len(_FIXED))
        self._words.setdefault(i, word)
        return i

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of the words and newlines of ``text``, after BOS when ``add_special_tokens``."""
        ids = [self._id(m.group()) for m in _TOKEN.finditer(text)]
        return [BOS, *ids] if add_special_tokens else ids

    def __call__(self, text: str, add_special_tokens: bool = True, **_: object) -> Encoding:
        return Encoding(self.encode(text, add_special_tokens))

    def decode(self, ids: list[int] | int, skip_special_tokens: bool = False, **_: object) -> str:
        """Words seen by ``encode`` come back as themselves, other ids as ``<id>``; words are space-separated."""
        ids = [ids] if isinstance(ids, int) else list(ids)
        out: list[str] = []
        for i in map(int, ids):
            if i in _SPECIAL:
                if not skip_special_tokens:
                    out.append(_SPECIAL[i])
                continue
            out.append(_FIXED[i] if i in _FIXED else self._words.get(i, f"<{i}>"))
        return "".join(w if w.startswith("\n") or not k or out[k - 1].startswith("\n") else " " + w
                       for k, w in enumerate(out))

    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = False, **_: object) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def apply_chat_template(self, messages: list[dict], tokenize: bool = True, add_generation_prompt: bool = False,
                            **_: object) -> str | list[int]:
        """``<s>``, then per message a ``<|role|>`` line, its content and an ``<|end|>`` line; an
        ``<|assistant|>`` line to prompt a reply."""
        text = self.bos_token + "".join(f"<|{m['role']}|>\n{m['content']}\n<|end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|assistant|>\n"
        return self.encode(text, add_special_tokens=False) if tokenize else text
