"""Request bodies of the HTTP API, in OpenAI's shape (pydantic models; FastAPI validates and documents them).

Only what the engine can honour is accepted with a value: unknown OpenAI fields are ignored (clients such as
LangChain send many), but ``n`` other than 1 and sampling values out of range are schema errors (400, naming
the field), so a client never silently gets something other than what it asked for.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chunkcache.engine.sequence import SEED_MAX, SEED_MIN

NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Lenient(BaseModel):
    """A request body: unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class TextPart(_Lenient):
    """One part of a message whose content is a list (only text parts are supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Sampling(_Lenient):
    """The generation settings shared by chat and text completions."""

    model: NonEmptyStr
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=1, ge=1)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported")
        return n

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(description="one prompt: a string, a one-string list, or token ids")
    echo: bool | None = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) and len(prompt) != 1:
            raise ValueError("only one prompt per request is supported")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool | None) -> bool | None:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    def token_limit(self) -> int | None:
        return self.max_tokens


class RagQueryRequest(_Lenient):
    question: NonEmptyStr
    k: int = Field(default=5, ge=1, le=50)
    budget_tokens: int | None = Field(default=None, ge=1)  # choose chunks under a prefill budget (rag/select.py)
    structure: Literal["sequential", "parallel", "graph"] | None = None  # as ``ask --structure``
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False


class DocumentText(_Lenient):
    """A document uploaded as text, stored as ``<store>/documents/<name>``."""

    name: NonEmptyStr = Field(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    text: NonEmptyStr


class DocumentPaths(_Lenient):
    """Files or folders already on the server to ingest."""

    paths: list[NonEmptyStr] = Field(min_length=1, max_length=256)
