"""The output options of `POST /v1/responses` beyond input and tools: what Threadline honours, what it refuses,
what has no effect (the whole table: docs/compatibility.md).

- honoured: `text.format` (`json_schema`, `json_object` → the upstream's `response_format`; the embedded model
  keeps to the schema with a llama.cpp grammar), `reasoning.effort` (models with the `reasoning` capability),
  `top_p`, `presence_penalty`, `frequency_penalty`;
- refused with 400 `unsupported_parameter` (`param` names the field): what asks for something Threadline does
  not do — logprobs, reasoning summaries, `verbosity` other than the default, a paid service tier, prompt
  templates, moderation, image generation options, context management, programmatic tool calling;
- no effect, echoed: `user`, `safety_identifier`, `prompt_cache_key`, `prompt_cache_retention`,
  `prompt_cache_options`, `stream_options`, `service_tier` `auto`/`default`, and the `include` values that
  name outputs Threadline never produces (tool call results, encrypted reasoning).
"""

from __future__ import annotations

from typing import Any, NoReturn

from threadline.errors import InvalidRequest, ValidationFailed
from threadline.providers.base import ResponseFormat

# `include` values (the SDK's ResponseIncludable): those that name outputs Threadline never produces have no effect.
INCLUDE_NO_EFFECT = {
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
}
INCLUDE_REFUSED = {"message.output_text.logprobs": "Threadline returns no log probabilities"}
SERVICE_TIERS_NO_EFFECT = ("auto", "default")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# Fields that ask for something Threadline does not do, refused whenever they carry a value.
REFUSED_FIELDS = {
    "access_programs": "Threadline runs no programmatic tool calling",
    "background_options": "Threadline's background responses take no options",
    "image": "Threadline generates no images",
    "moderation": "Threadline runs no moderation",
    "prompt": "Threadline has no stored prompt templates; send 'instructions' and 'input' instead",
}


def unsupported(param: str, why: str) -> NoReturn:
    raise InvalidRequest(f"'{param}' is not supported: {why}.", code="unsupported_parameter", param=param)


def check_refused(fields: dict[str, Any]) -> None:
    """Refuse every field of `REFUSED_FIELDS` given a value."""
    for name, why in REFUSED_FIELDS.items():
        if fields.get(name) is not None:
            unsupported(name, why)


def check_include(include: list[Any] | None) -> list[str]:
    values: list[str] = []
    for i, value in enumerate(include or []):
        if not isinstance(value, str):
            raise ValidationFailed("'include' lists strings.", code="invalid_type", param=f"include.{i}")
        if value in INCLUDE_REFUSED:
            unsupported("include", f"'{value}' asks for what {INCLUDE_REFUSED[value]}")
        if value not in INCLUDE_NO_EFFECT:
            raise ValidationFailed(
                f"Invalid value for 'include': '{value}'.", code="invalid_value", param=f"include.{i}"
            )
        values.append(value)
    return values


def service_tier(value: str | None) -> str:
    """The tier echoed: `default` (Threadline has one)."""
    if value is not None and value not in SERVICE_TIERS_NO_EFFECT:
        unsupported("service_tier", f"Threadline serves every request alike; use 'auto' or 'default', not '{value}'")
    return "default"


def check_top_logprobs(value: int | None) -> None:
    if value:
        unsupported("top_logprobs", "Threadline returns no log probabilities")


def reasoning_effort(reasoning: dict[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
    """(the effort to send, the `reasoning` echoed). Summaries cannot be produced through chat completions."""
    if reasoning is None:
        return None, None
    for key in reasoning:
        if key not in ("effort", "summary", "generate_summary", "context", "mode"):
            raise ValidationFailed(
                f"Unknown parameter 'reasoning.{key}'.", code="unknown_parameter", param=f"reasoning.{key}"
            )
    for key in ("summary", "generate_summary"):
        if reasoning.get(key) is not None:
            unsupported(f"reasoning.{key}", "Threadline's upstreams (chat completions) return no reasoning summaries")
    for key in ("context", "mode"):
        if reasoning.get(key) is not None:
            unsupported(f"reasoning.{key}", "Threadline passes the reasoning effort only")
    effort = reasoning.get("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ValidationFailed(
            f"Invalid value for 'reasoning.effort': '{effort}'.", code="invalid_value", param="reasoning.effort"
        )
    return effort, {"effort": effort, "summary": None}


def text_format(text: dict[str, Any] | None) -> tuple[ResponseFormat | None, dict[str, Any]]:
    """(the structured output asked for, the `text` echoed as used)."""
    text = text or {}
    for key in text:
        if key not in ("format", "verbosity"):
            raise ValidationFailed(f"Unknown parameter 'text.{key}'.", code="unknown_parameter", param=f"text.{key}")
    verbosity = text.get("verbosity")
    if verbosity is not None and verbosity != "medium":
        if verbosity not in ("low", "high"):
            raise ValidationFailed(
                f"Invalid value for 'text.verbosity': '{verbosity}'.", code="invalid_value", param="text.verbosity"
            )
        unsupported(
            "text.verbosity", f"Threadline's upstreams take no verbosity; omit it or use 'medium', not '{verbosity}'"
        )
    fmt = text.get("format") or {"type": "text"}
    if not isinstance(fmt, dict):
        raise ValidationFailed("'text.format' is an object with a 'type'.", code="invalid_type", param="text.format")
    echo = {"format": fmt, "verbosity": "medium"}
    kind = fmt.get("type")
    if kind == "text":
        return None, {**echo, "format": {"type": "text"}}
    if kind == "json_object":
        return ResponseFormat("json_object"), {**echo, "format": {"type": "json_object"}}
    if kind != "json_schema":
        raise ValidationFailed(
            f"Invalid value for 'text.format.type': '{kind}': use text, json_schema or json_object.",
            code="invalid_value",
            param="text.format.type",
        )
    name, schema, description, strict = (fmt.get(k) for k in ("name", "schema", "description", "strict"))
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise ValidationFailed(
            "A 'json_schema' format needs 'name' as a string of 1 to 64 characters.",
            code="missing_required_parameter" if name is None else "invalid_type",
            param="text.format.name",
        )
    if not isinstance(schema, dict):
        raise ValidationFailed(
            "A 'json_schema' format needs 'schema' as a JSON Schema object.",
            code="missing_required_parameter" if schema is None else "invalid_type",
            param="text.format.schema",
        )
    if description is not None and not isinstance(description, str):
        raise ValidationFailed("'description' is a string.", code="invalid_type", param="text.format.description")
    if strict is not None and not isinstance(strict, bool):
        raise ValidationFailed("'strict' is a boolean.", code="invalid_type", param="text.format.strict")
    used = {"type": "json_schema", "name": name, "schema": schema, "description": description, "strict": strict}
    return ResponseFormat("json_schema", name, schema, description, strict), {**echo, "format": used}
