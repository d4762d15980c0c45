"""Output items and stream events of one response, from the chat path's deltas.

`ResponseBuilder.feed(delta)` takes what `ChoiceOutput.update` returns (reasoning_content,
content, tool_calls pieces) and returns the stream events it makes: an item is announced
(`response.output_item.added`, then `response.content_part.added` for text) when its first
piece arrives, and its pieces follow as `response.reasoning_text.delta`,
`response.output_text.delta` or `response.function_call_arguments.delta`. A reasoning item is
done as soon as something else starts; the rest are closed by `finish` (`*.done`,
`response.content_part.done`, `response.output_item.done`), in output order. The
non-streaming handler feeds the one final delta and drops the events, so both give the same
items. Every event carries `type` and `sequence_number`, as the official client reads them.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseBuilder:
    def __init__(self) -> None:
        self.seq = 0
        self.items: List[Dict[str, Any]] = []  # output items, in output_index order
        self.open: List[int] = []  # output indexes of items not yet done
        self.message: Optional[int] = None  # the message item's output index
        self.reasoning: Optional[int] = None
        self.calls: List[int] = []  # output index of tool call k

    def event(self, kind: str, **fields: Any) -> Dict[str, Any]:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    # ---- items -------------------------------------------------------------------------

    def _add(self, item: Dict[str, Any], events: List[Dict[str, Any]]) -> int:
        index = len(self.items)
        self.items.append(item)
        self.open.append(index)
        events.append(self.event("response.output_item.added", output_index=index, item=_snapshot(item)))
        if item["type"] in ("message", "reasoning"):
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} \
                if item["type"] == "message" else {"type": "reasoning_text", "text": ""}
            item["content"].append(part)
            events.append(self.event("response.content_part.added", item_id=item["id"], output_index=index,
                                     content_index=0, part=dict(part)))
        return index

    def _done(self, index: int, events: List[Dict[str, Any]], status: str = "completed") -> None:
        item = self.items[index]
        item["status"] = status
        self.open.remove(index)
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            events.append(self.event("response.function_call_arguments.done", **where, name=item["name"],
                                     arguments=item["arguments"]))
        else:
            part = item["content"][0]
            kind = "response.output_text.done" if item["type"] == "message" else "response.reasoning_text.done"
            extra = {"logprobs": []} if item["type"] == "message" else {}
            events.append(self.event(kind, **where, content_index=0, text=part["text"], **extra))
            events.append(self.event("response.content_part.done", **where, content_index=0, part=dict(part)))
        events.append(self.event("response.output_item.done", output_index=index, item=_snapshot(item)))

    def feed(self, delta: Dict[str, Any]) -> List[Dict[str, Any]]:
        events: List[Dict[str, Any]] = []
        text = delta.get("reasoning_content")
        if text:
            if self.reasoning is None:
                self.reasoning = self._add({"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [],
                                            "status": "in_progress"}, events)
            self._text(self.reasoning, text, "response.reasoning_text.delta", events)
        if (delta.get("content") or delta.get("tool_calls")) and self.reasoning in self.open:
            self._done(self.reasoning, events)  # the answer started: the reasoning is complete
        text = delta.get("content")
        if text:
            if self.message is None:
                self.message = self._add({"id": new_id("msg"), "type": "message", "role": "assistant",
                                          "status": "in_progress", "content": []}, events)
            self._text(self.message, text, "response.output_text.delta", events)
        for piece in delta.get("tool_calls") or []:
            fn = piece.get("function") or {}
            if piece.get("id"):  # the first piece of call k
                self.calls.append(self._add({"id": new_id("fc"), "type": "function_call", "call_id": piece["id"],
                                             "name": fn.get("name", ""), "arguments": "",
                                             "status": "in_progress"}, events))
            args = fn.get("arguments")
            if args:
                index = self.calls[piece["index"]]
                self.items[index]["arguments"] += args
                events.append(self.event("response.function_call_arguments.delta", item_id=self.items[index]["id"],
                                         output_index=index, delta=args))
        return events

    def _text(self, index: int, text: str, kind: str, events: List[Dict[str, Any]]) -> None:
        item = self.items[index]
        item["content"][0]["text"] += text
        extra = {"logprobs": []} if item["type"] == "message" else {}
        events.append(self.event(kind, item_id=item["id"], output_index=index, content_index=0, delta=text, **extra))

    def finish(self, incomplete: bool) -> List[Dict[str, Any]]:
        """Close every open item (a message cut by the length limit is incomplete, as OpenAI marks it)."""
        events: List[Dict[str, Any]] = []
        if not self.items:  # nothing was generated: an empty message, as OpenAI answers then
            self.message = self._add({"id": new_id("msg"), "type": "message", "role": "assistant",
                                      "status": "in_progress", "content": []}, events)
        for index in list(self.open):
            is_text = self.items[index]["type"] == "message"
            self._done(index, events, "incomplete" if incomplete and is_text else "completed")
        return events


def _snapshot(item: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of the item as it stands (events must not change when the item grows later)."""
    return {**item, "content": [dict(p) for p in item["content"]]} if "content" in item else dict(item)
