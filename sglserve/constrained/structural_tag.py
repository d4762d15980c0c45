"""Structural tags (SGLang's `structural_tag` sampling parameter, in its JSON shape): free text in
which a trigger string starts a tagged segment `begin` + JSON matching `schema` + `end`.

    {"type": "structural_tag", "triggers": ["<tool_call>"],
     "structures": [{"begin": "<tool_call>\\n{\\"name\\": \\"f\\", \\"arguments\\": ", "schema": {...},
                     "end": "}\\n</tool_call>"}]}

Strict tools (`function.strict: true`) under tool_choice "auto" use it (chat_tool_grammar.py):
the model may answer in text, but once it starts a call its arguments follow the schema.
`parse` checks the shape (a 400 names what is wrong); each backend turns the result into its own
grammar (xgrammar's triggered_tags format, llguidance's lazy Lark rules).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

Structure = Tuple[str, Dict[str, Any], str]  # (begin, schema, end)


def parse(text: str) -> Tuple[List[str], List[Structure]]:
    """(triggers, structures) of a structural_tag; ValueError naming what is malformed."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"Invalid structural_tag: not JSON ({e}).") from None
    if not isinstance(obj, dict):
        raise ValueError("Invalid structural_tag: must be a JSON object with structures and triggers.")
    triggers, structures = obj.get("triggers"), obj.get("structures")
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
        raise ValueError("Invalid structural_tag: triggers must be a non-empty list of non-empty strings.")
    if not isinstance(structures, list) or not structures:
        raise ValueError("Invalid structural_tag: structures must be a non-empty list.")
    out = []
    for i, s in enumerate(structures):
        if not isinstance(s, dict) or not isinstance(s.get("begin"), str) or not isinstance(s.get("end"), str):
            raise ValueError(f"Invalid structural_tag: structures[{i}] needs string begin and end.")
        schema = s.get("schema", {})
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                raise ValueError(f"Invalid structural_tag: structures[{i}].schema is not JSON.") from None
        if not isinstance(schema, dict):
            raise ValueError(f"Invalid structural_tag: structures[{i}].schema must be a JSON schema object.")
        if not any(s["begin"].startswith(t) for t in triggers):
            raise ValueError(f"Invalid structural_tag: structures[{i}].begin {s['begin']!r} starts with no trigger.")
        out.append((s["begin"], schema, s["end"]))
    return triggers, out


def to_xgrammar(text: str) -> str:
    """xgrammar's structural-tag JSON (its triggered_tags format)."""
    triggers, structures = parse(text)
    tags = [{"type": "tag", "begin": b, "content": {"type": "json_schema", "json_schema": sch}, "end": e}
            for b, sch, e in structures]
    return json.dumps({"type": "structural_tag",
                       "format": {"type": "triggered_tags", "triggers": triggers, "tags": tags}})


def to_lark(text: str) -> str:
    """llguidance's Lark grammar: each structure's trigger starts a lazy rule."""
    import llguidance as llg

    triggers, structures = parse(text)
    tags = [llg.StructTag(trigger=next(t for t in triggers if b.startswith(t)), begin=b, grammar=sch, end=e)
            for b, sch, e in structures]
    return llg.StructTag.to_grammar(tags, assume_special=False)
