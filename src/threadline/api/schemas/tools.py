"""Function tools in the Assistants v2 spelling (`{"type": "function", "function": {name, description,
parameters, strict}}`), shared by assistants and runs. Other tool types (code_interpreter, file_search) need
files Threadline does not have: a 400 naming the type."""

from __future__ import annotations

from typing import Any

from threadline.errors import InvalidRequest, ValidationFailed
from threadline.providers.base import FunctionTool, ToolChoiceFunction

MAX_TOOLS = 128


def assistants_tools(value: list[Any], param: str = "tools") -> list[FunctionTool]:
    if len(value) > MAX_TOOLS:
        raise ValidationFailed(f"At most {MAX_TOOLS} tools are allowed.", code="too_many_tools", param=param)
    tools: list[FunctionTool] = []
    for i, tool in enumerate(value):
        at = f"{param}.{i}"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise InvalidRequest(
                f"Tools of type '{kind}' are not supported: Threadline offers the model function tools only.",
                code="unsupported_tool_type",
                param=f"{at}.type",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ValidationFailed("A function tool needs 'function' as an object.", code="invalid_type", param=at)
        name = function.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValidationFailed(
                "A function needs 'name' as a string of 1 to 64 characters.",
                code="invalid_type",
                param=f"{at}.function.name",
            )
        description, parameters, strict = (function.get(k) for k in ("description", "parameters", "strict"))
        if description is not None and not isinstance(description, str):
            raise ValidationFailed(
                "'description' is a string.", code="invalid_type", param=f"{at}.function.description"
            )
        if parameters is not None and not isinstance(parameters, dict):
            raise ValidationFailed(
                "'parameters' is a JSON Schema object.", code="invalid_type", param=f"{at}.function.parameters"
            )
        if strict is not None and not isinstance(strict, bool):
            raise ValidationFailed("'strict' is a boolean.", code="invalid_type", param=f"{at}.function.strict")
        if any(t.name == name for t in tools):
            raise ValidationFailed(
                f"Two tools are named '{name}': tool names must be unique.",
                code="duplicate_tool_name",
                param=f"{at}.function.name",
            )
        tools.append(FunctionTool(name, description, parameters, strict))
    return tools


def assistants_tool_choice(choice: str | dict[str, Any] | None) -> str | ToolChoiceFunction | None:
    """`none` | `auto` | `required` | `{"type": "function", "function": {"name"}}` (checked against the tools
    when the run starts: `check_tool_choice`)."""
    if choice is None or isinstance(choice, str):
        if choice not in (None, "none", "auto", "required"):
            raise ValidationFailed(
                f"Invalid tool_choice '{choice}': use none, auto, required or a function.",
                code="invalid_value",
                param="tool_choice",
            )
        return choice
    if choice.get("type") != "function":
        raise InvalidRequest(
            f"tool_choice of type '{choice.get('type')}' is not supported: use none, auto, required or a function.",
            code="unsupported_tool_type",
            param="tool_choice.type",
        )
    name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
    if not isinstance(name, str):
        raise ValidationFailed(
            "A function tool_choice needs 'function.name'.", code="invalid_type", param="tool_choice.function.name"
        )
    return ToolChoiceFunction(name)
