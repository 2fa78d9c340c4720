"""Prompt formatting: the one place where a (prompt, response) pair becomes tokens.

Training and evaluation both call these functions, so a model is evaluated with exactly the
formatting it was trained with.

- With a chat template (instruct models), the prompt is the rendered single-turn conversation up
  to the generation prompt, and the response is what the template appends for the assistant turn
  (the text plus its end-of-turn marker).
- Without one (base models), the documented plain template :data:`PLAIN_TEMPLATE` is used and
  the response ends with the EOS token.
"""

from __future__ import annotations

from dataclasses import dataclass

from clo.errors import CloError

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str) -> str:
    """The text a model sees before its answer to ``prompt``."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(prompt=prompt)


def render_completion(tokenizer, prompt: str, response: str) -> str:
    """The text that follows :func:`render_prompt` when the model answers ``response``."""
    if has_chat_template(tokenizer):
        head = render_prompt(tokenizer, prompt)
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False,
        )
        if not full.startswith(head):
            raise ValueError(
                "the chat template renders the assistant turn in a way that does not extend the "
                "generation prompt; clo cannot separate prompt and response tokens for this template"
            )
        return full[len(head):]
    return response + (tokenizer.eos_token or "")


def _bos_in_text(tokenizer, text: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)


@dataclass(frozen=True)
class EncodedPair:
    prompt_ids: list[int]
    response_ids: list[int]
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


class PromptTooLong(CloError, ValueError):
    """A prompt longer than the model's context, even after truncation."""


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    text = render_prompt(tokenizer, prompt)
    # Chat templates write BOS into the text themselves; the plain template relies on the
    # tokenizer adding it. Never both.
    add_special = not has_chat_template(tokenizer) and not _bos_in_text(tokenizer, text)
    ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    if add_special and ids and getattr(tokenizer, "eos_token_id", None) is not None:
        # Some tokenizers append EOS with add_special_tokens; a prompt must not end in EOS.
        while len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
    return ids


def encode_pair(tokenizer, prompt: str, response: str, max_length: int | None = None) -> EncodedPair:
    """Token ids of the prompt and of the response, tokenised separately.

    Separate tokenisation keeps the boundary exact (no merge across it), which is what the
    log-prob convention needs: ``log π(y|x)`` sums over exactly ``response_ids``.
    Truncation keeps the prompt and cuts the end of the response; a prompt that alone leaves no
    room for one response token raises :class:`PromptTooLong`.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = tokenizer(render_completion(tokenizer, prompt, response), add_special_tokens=False)[
        "input_ids"
    ]
    truncated = False
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            raise PromptTooLong(f"prompt is {len(prompt_ids)} tokens, max_length is {max_length}")
        room = max_length - len(prompt_ids)
        if len(response_ids) > room:
            response_ids = response_ids[:room]
            truncated = True
    return EncodedPair(list(prompt_ids), list(response_ids), truncated)
