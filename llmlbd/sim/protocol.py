"""Reading OpenAI-style request bodies the way vLLM does, and rejecting bad ones as it does."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmlbd.kvblocks.local import LocalTokenizer

import json
from dataclasses import dataclass
from functools import lru_cache

from llmlbd.sim.config import SimConfig
from llmlbd.sim.errors import SimHTTPError
from llmlbd.sim.tokenizer import detokenize, render_chat, tokenize

__all__ = [
    "InferenceRequest",
    "read_json",
    "parse_inference",
    "resolve_model",
    "prompt_of",
    "prompt_ids_of",
]


@dataclass
class InferenceRequest:
    kind: str  # "chat" or "completion"
    model: str  # the name the client used (base model or adapter)
    lora: str | None
    prompt_text: str
    prompt_ids: list[int]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    ignore_eos: bool
    n: int
    cache_salt: str | None

    @property
    def cache_scope(self) -> tuple:
        return (self.lora or "", self.cache_salt or "")


def read_json(environ: dict) -> dict:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise SimHTTPError(400, f"JSON decode error: {exc}", error_type="Bad Request") from None
    if not isinstance(body, dict):
        raise SimHTTPError(
            400, "Input should be a valid dictionary", param="body", error_type="Bad Request"
        )
    return body


def resolve_model(config: SimConfig, name: object) -> tuple[str, str | None]:
    """(the served name, the adapter or None); an unknown name is vLLM's 404."""
    if name in (None, "", config.model):
        return config.model, None
    if isinstance(name, str) and name in config.loras:
        return name, name
    valid = ", ".join([config.model, *config.loras])
    raise SimHTTPError(
        404, f"The model `{name}` does not exist. Valid aliases: {valid}", param="model"
    )


def prompt_of(kind: str, body: dict) -> str:
    """The prompt text of a chat or completion body (token-id prompts are decoded)."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise SimHTTPError(
                400,
                "Field required: messages must be a non-empty list",
                param="body.messages",
                error_type="Bad Request",
            )
        return render_chat(messages, bool(body.get("add_generation_prompt", True)))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return detokenize(prompt)
    raise SimHTTPError(
        400,
        "prompt must be a string or a list of token ids (the simulator "
        "serves one prompt per request)",
        param="prompt",
        error_type="Bad Request",
    )


@lru_cache(maxsize=4)
def _hf_tokenizer(directory: str) -> LocalTokenizer:
    from llmlbd.kvblocks.local import LocalTokenizer

    return LocalTokenizer(directory)


def prompt_ids_of(config: SimConfig, kind: str, body: dict, prompt_text: str) -> list[int]:
    """The prompt's token ids: the model's own tokenizer and chat template with --tokenizer
    (what a real vLLM does), else the built-in stand-in tokenizer on *prompt_text*."""
    if config.tokenizer_dir is None:
        return tokenize(prompt_text)
    hf = _hf_tokenizer(config.tokenizer_dir)
    try:
        text, special = hf.render(body if kind == "chat" else {"prompt": prompt_text})
    except Exception as exc:  # a template error is the client's 400, as in vLLM
        raise SimHTTPError(400, f"cannot apply the chat template: {exc}") from None
    ids: list[int] = hf.encode(text, special)
    return ids


def parse_inference(config: SimConfig, kind: str, body: dict) -> InferenceRequest:
    model, lora = resolve_model(config, body.get("model"))
    prompt_text = prompt_of(kind, body)
    if (
        kind == "completion"
        and isinstance(body.get("prompt"), list)
        and body["prompt"]
        and isinstance(body["prompt"][0], int)
    ):
        prompt_ids = list(body["prompt"])
    else:
        prompt_ids = prompt_ids_of(config, kind, body, prompt_text)
    max_tokens = body.get("max_completion_tokens") if kind == "chat" else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens", 16 if kind == "completion" else None)
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise SimHTTPError(
            400,
            f"max_tokens must be at least 1, got {max_tokens}.",
            param="max_tokens",
            error_type="Bad Request",
        )
    n = body.get("n", 1)
    if n != 1:
        raise SimHTTPError(400, "the simulator supports only n=1", param="n")
    prompt_len = len(prompt_ids)
    limit = config.max_model_len
    # vLLM 0.32 rejects a prompt that leaves no room and a max_tokens above the
    # context length; a max_tokens that merely overflows it is cut to what fits.
    if prompt_len >= limit:
        shown = min(prompt_len, limit + 1)
        raise SimHTTPError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your "
            f"prompt contains at least {shown} input tokens, which exceeds this limit "
            f"even without any output tokens. Please reduce the length of the input "
            f"prompt. (parameter=input_tokens, value={shown})",
            param="input_tokens",
        )
    if max_tokens is not None and max_tokens > limit:
        raise SimHTTPError(
            400,
            f"max_tokens={max_tokens} cannot be greater than max_model_len={limit}. "
            f"Please request fewer output tokens. (parameter=max_tokens, "
            f"value={max_tokens})",
            param="max_tokens",
        )
    stream_options = body.get("stream_options") or {}
    cache_salt = body.get("cache_salt")
    return InferenceRequest(
        kind=kind,
        model=model,
        lora=lora,
        prompt_text=prompt_text,
        prompt_ids=prompt_ids,
        stream=bool(body.get("stream", False)),
        include_usage=bool(
            isinstance(stream_options, dict) and stream_options.get("include_usage")
        ),
        max_tokens=max_tokens,
        ignore_eos=bool(body.get("ignore_eos", False)),
        n=1,
        cache_salt=cache_salt if isinstance(cache_salt, str) and cache_salt else None,
    )
