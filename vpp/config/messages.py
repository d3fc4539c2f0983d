"""One-line messages for pydantic validation errors, shared by the config loader and the
market file formats so that a user reads the same words for the same fault."""

from __future__ import annotations

from pydantic_core import ErrorDetails

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "missing required field",
}


def validation_message(item: ErrorDetails) -> str:
    """What is wrong, in one line starting in lower case; the offending value is quoted
    unless it is a mapping, a list or a field that may hold a secret."""
    kind = item["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "union_tag_invalid":
        ctx = item.get("ctx", {})
        return f"unknown kind {ctx.get('tag')!r}: expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"missing '{item.get('ctx', {}).get('discriminator', 'kind').strip(chr(39))}'"
    message = str(item["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    elif (
        "input" in item
        and not isinstance(item["input"], dict | list)
        and not _secretive(item["loc"])
    ):
        message = f"{message} (got {item['input']!r})"
    return message[0].lower() + message[1:] if message else kind


def _secretive(loc: tuple[int | str, ...]) -> bool:
    """Fields whose value may be a secret typed in the wrong place: never echo them back."""
    name = str(loc[-1]) if loc else ""
    return name.endswith(("_env", "url", "password", "token", "secret"))
