"""The model's own tokenizer and chat template, from its Hugging Face files.

A directory with ``tokenizer.json`` (the `tokenizers` library reads it) and
``tokenizer_config.json`` (``chat_template``, ``bos_token``, ``eos_token``;
a ``chat_template.jinja`` file wins over the JSON's template, as in
transformers). Chat prompts are rendered as vLLM does through transformers'
``apply_chat_template``: a sandboxed Jinja environment with ``trim_blocks``
and ``lstrip_blocks``, then tokenized without adding special tokens (the
template writes them). A completions prompt is tokenized with them.

Known limit: vLLM flattens list-of-parts content to a string for templates
that expect strings; here the content is passed as the request gave it, which
the common templates (Llama, Qwen, Mistral) handle identically for text parts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmlbd.kvblocks.optional import require

__all__ = ["LocalTokenizer"]


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class LocalTokenizer:
    def __init__(self, directory: str) -> None:
        tokenizers = require("tokenizers")
        loopcontrols = require("jinja2.ext").loopcontrols
        sandbox = require("jinja2.sandbox")

        root = Path(directory)
        if not (root / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{root}/tokenizer.json not found (lb_config.tokenizer)")
        self.tokenizer = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
        config_path = root / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (root / "chat_template.jinja").is_file():
            template = (root / "chat_template.jinja").read_text()
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        env = sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = lambda value, indent=None: json.dumps(
            value, indent=indent, ensure_ascii=False
        )
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(template) if isinstance(template, str) else None
        # Texts of the special tokens: a prompt is cut only right after one of them, where
        # the tokenizer is known to start a new token (tokenization cache).
        self.special = sorted(
            {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special},
            key=len,
            reverse=True,
        )

    def render(self, body: dict[str, Any]) -> tuple[str, bool]:
        """(text, add_special_tokens) of a chat or completions body; ValueError without a prompt."""
        messages = body.get("messages")
        if isinstance(messages, list):
            if self.template is None:
                raise ValueError("the tokenizer directory has no chat template")
            kwargs = body.get("chat_template_kwargs")
            text = self.template.render(
                **(kwargs if isinstance(kwargs, dict) else {}),
                messages=messages,
                tools=body.get("tools"),
                add_generation_prompt=bool(body.get("add_generation_prompt", True)),
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
            return text, bool(body.get("add_special_tokens", False))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt, bool(body.get("add_special_tokens", True))
        raise ValueError("no chat messages or string prompt to tokenize")

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


def _raise(message: str) -> None:
    raise require("jinja2.exceptions").TemplateError(message)
