"""benchmarks/host_path/step_gaps.py: a client's long gap is put on the scheduler's step that was
as long, or, with no such step, after the scheduler."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "host_path" / "step_gaps.py"
spec = importlib.util.spec_from_file_location("step_gaps", PATH)
step_gaps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_gaps)


def step(sent: float, **kw) -> dict:
    row = {"launch": sent - 0.03, "planned": sent - 0.029, "launched": sent - 0.02, "resolve": sent - 0.004,
           "synced": sent - 0.002, "sent": sent, "mode": "decode", "reqs": 2, "prefill_tokens": 0,
           "looked_ahead": True}
    row.update(kw)
    return row


def test_long_gaps_are_classed_by_the_steps_around_them():
    # Steps every 30 ms, but one 150 ms step (sent at 0.27) and a 30 ms one after it
    sent = [0.03 * i for i in range(1, 5)] + [0.27, 0.30, 0.33, 0.36]
    steps = [step(t) for t in sent]
    steps[4].update(mode="extend", prefill_tokens=2048, reqs=9)
    details = {
        "start_times": [0.0, 0.0],
        # stream 0 sees the long step (0.12 -> 0.275); stream 1 gets 0.30's token late (0.33 -> 0.45)
        "chunk_times": [[0.035, 0.065, 0.095, 0.125, 0.275, 0.305],
                        [0.035, 0.065, 0.125, 0.33, 0.45]],
    }
    out = step_gaps.classify(details, steps, min_ms=80)
    assert out["chunk_gaps"] == 5 + 4
    # 0.125 -> 0.275: the 150 ms step; 0.125 -> 0.33 (205 ms) holds that step, but it is under 0.8 x 205;
    # 0.33 -> 0.45: only 30 ms steps in between
    assert out["gaps_over_80ms"] == {"step": 1, "after": 2}
    worst = out["longest_steps"][0]
    assert worst["gap_ms"] == 150.0 and worst["mode"] == "extend" and worst["prefill_tokens"] == 2048


def test_load_details_picks_the_tagged_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"tag": t, "chunk_times": [], "start_times": []}) for t in ("a", "b")) + "\n")
    assert step_gaps.load_details(str(f), "a")["tag"] == "a"
    assert step_gaps.load_details(str(f), None)["tag"] == "b"
