"""Token-level prompt assembly (DESIGN section 2.5):

    template prefix | chunk 1 | chunk 2 | ... | chunk k | question + template suffix

The template prefix (chat header and the fixed instruction) is the same for every request, so it is
computed once and is an exact prefix cache. Every chunk is tokenized on its own, never as part of a
larger string, so its token ids (and its cache identity) are the same wherever it lands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

INSTRUCTION = (
    "Answer the question using the passages below. Answer directly and briefly, "
    "in a few words; do not repeat the question.\n\n"
)
_MARK = "\u0000CHUNKCACHE_CONTEXT\u0000"


@dataclass(frozen=True)
class Span:
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start

    def range(self, device=None) -> torch.Tensor:
        return torch.arange(self.start, self.end, device=device)


@dataclass
class Layout:
    """Where each part of an assembled prompt sits. ``chunk_ids[i]`` is the cache identity of chunk i;
    ``edges`` are (source, target) chunk index pairs of a structured request (strategies/graph.py)."""

    prefix: Span
    chunks: list[Span]
    question: Span
    chunk_ids: list[str] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.question.end

    @property
    def context_tokens(self) -> int:
        return sum(len(c) for c in self.chunks)


def template_key(prefix_ids: list[int]) -> str:
    """Hash of a template prefix: part of every chunk's cache identity (records are computed after it)."""
    return hashlib.sha256(repr(list(prefix_ids)).encode()).hexdigest()[:16]


class PromptTemplate:
    """Splits the model's chat template around the context so the three parts tokenize separately.

    Models without a chat template (e.g. the Gemma 3 270M base model) get a plain-text template.
    """

    def __init__(self, tokenizer, instruction: str = INSTRUCTION) -> None:
        self.tokenizer = tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction + _MARK}], tokenize=False, add_generation_prompt=True)
            head, tail = text.split(_MARK)
        else:
            head, tail = instruction, "\nAnswer:"
        self.head = head
        self.tail = tail
        ids = tokenizer(head, add_special_tokens=True).input_ids
        bos = tokenizer.bos_token_id
        if len(ids) > 1 and bos is not None and ids[0] == ids[1] == bos:
            ids = ids[1:]  # the chat template already wrote BOS and the tokenizer added another
        self.prefix_ids: list[int] = ids

    @property
    def key(self) -> str:
        return template_key(self.prefix_ids)

    def encode_chunk(self, text: str) -> list[int]:
        """A chunk's token ids, tokenized alone."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def encode_question(self, question: str) -> list[int]:
        """Question plus the template suffix (end of user turn, assistant header)."""
        return self.tokenizer(f"Question: {question}{self.tail}", add_special_tokens=False).input_ids

    def assemble(self, chunks: list[list[int]], question_ids: list[int],
                 chunk_ids: list[str] | None = None) -> tuple[torch.Tensor, Layout]:
        """Token ids and layout of ``prefix | chunks... | question``."""
        if not question_ids:
            raise ValueError("the question is empty")
        ids = list(self.prefix_ids)
        spans = []
        for c in chunks:
            if not c:
                raise ValueError("a chunk has no tokens")
            spans.append(Span(len(ids), len(ids) + len(c)))
            ids.extend(c)
        q = Span(len(ids), len(ids) + len(question_ids))
        ids.extend(question_ids)
        layout = Layout(Span(0, len(self.prefix_ids)), spans, q, list(chunk_ids or []))
        return torch.tensor(ids, dtype=torch.long), layout
