"""The grammars of tool calling: what tool_choice "required", a named tool and strict tools
constrain the output to (chat_tools.py decides which applies).

Tool schemas are often Pydantic-generated, with shared definitions under `$defs` (or the older
`definitions`) and `$ref: "#/$defs/Name"` pointers. A `$ref` is resolved from the root of the
schema the grammar compiles, so when tool schemas are nested into one ("required": an array of
calls), their definitions are hoisted to that root, as SGLang does; two tools defining the same
name differently cannot share the root and are refused with a 400.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from sglserve.entrypoints.openai.serving_utils import OpenAIError

DEF_KEYS = ("$defs", "definitions")

# fmt -> (trigger, begin of a call before the name, between name and arguments, end)
STRICT_FORMATS = {
    "llama3": ('{"name"', '{"name": ', ', "parameters": ', "}"),
    "hermes": ("<tool_call>", '<tool_call>\n{"name": ', ', "arguments": ', "}\n</tool_call>"),
    "mistral": ("[TOOL_CALLS]", '[TOOL_CALLS] [{"name": ', ', "arguments": ', "}]"),
}


def params_schema(tool: Any) -> Dict[str, Any]:
    return tool.function.parameters or {"type": "object", "properties": {}}


def hoist_defs(schemas: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """(the schemas without their definitions, {"$defs": {...}, "definitions": {...}} of all of them)."""
    hoisted: Dict[str, Dict[str, Any]] = {}
    out = []
    for schema in schemas:
        schema = dict(schema)
        for key in DEF_KEYS:
            defs = schema.pop(key, None)
            if defs is None:
                continue
            if not isinstance(defs, dict):
                raise OpenAIError(f"Tool parameters: {key} must be an object, got {type(defs).__name__}.", param="tools")
            merged = hoisted.setdefault(key, {})
            for name, definition in defs.items():
                if name in merged and merged[name] != definition:
                    raise OpenAIError(f"Tools define {key}/{name} differently; their schemas cannot be combined "
                                      f"into one grammar. Rename one of the definitions.", param="tools")
                merged[name] = definition
        out.append(schema)
    return out, hoisted


def required_schema(tools: List[Any], parallel: Optional[bool]) -> str:
    """tool_choice "required": a JSON array of one or more {"name", "parameters"} calls."""
    params, defs = hoist_defs([params_schema(t) for t in tools])
    calls = [
        {"type": "object", "properties": {"name": {"type": "string", "enum": [t.function.name]}, "parameters": p},
         "required": ["name", "parameters"], "additionalProperties": False}
        for t, p in zip(tools, params)
    ]
    schema: Dict[str, Any] = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
                              **defs}
    if parallel is False:
        schema["maxItems"] = 1
    return json.dumps(schema)


def named_schema(tool: Any) -> str:
    """A named tool_choice: the output is the tool's arguments (its own $defs resolve at the root)."""
    return json.dumps(params_schema(tool))


def strict_structural_tag(fmt: str, tools: List[Any]) -> Optional[str]:
    """tool_choice "auto" with strict tools: a structural tag that lets the model write text, but
    makes every call it starts follow the format and (for strict tools) the schema. Non-strict
    tools get a structure too, with any object as arguments, so calls to them stay possible."""
    if not any(t.function.strict for t in tools):
        return None
    if fmt not in STRICT_FORMATS:
        raise OpenAIError(f"function.strict needs a JSON tool-call format (--tool-call-parser "
                          f"{', '.join(f for f in STRICT_FORMATS if f != 'hermes')}, qwen25 or hermes); "
                          f"the {fmt} format cannot be enforced by a grammar.", param="tools")
    trigger, head, middle, end = STRICT_FORMATS[fmt]
    structures = [{"begin": f"{head}{json.dumps(t.function.name)}{middle}",
                   "schema": params_schema(t) if t.function.strict else {"type": "object"}, "end": end}
                  for t in tools]
    return json.dumps({"type": "structural_tag", "structures": structures, "triggers": [trigger]})
