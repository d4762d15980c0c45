"""sglserve.benchmark.teacher_forced without a model: which conversations make up the fixed text,
the extracted file that carries them to the GPU machine, and the metrics' arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sglserve.benchmark import teacher_forced as tf

REPO = Path(__file__).resolve().parents[2]


def _sharegpt(path: Path, n: int, truncate: bool = False) -> None:
    records = [{"id": "empty", "conversations": []}, {"id": "other", "conversations": [{"from": "system", "value": "s"}]}]
    for i in range(n):
        records.append({"id": str(i), "conversations": [
            {"from": "gpt" if i % 3 == 0 else "human", "value": f"q{i}"},
            {"from": "chatgpt", "value": f"a{i}"}, {"from": "tool", "value": "dropped"}]})
    text = json.dumps(records)
    path.write_text(text[: len(text) - 40] if truncate else text)  # cut inside the last record


def test_first_conversations_roles_and_truncated_file(tmp_path):
    src = tmp_path / "sharegpt.json"
    _sharegpt(src, 6, truncate=True)
    convs = tf.load_conversations(str(src), 4)
    assert [c[0]["content"] for c in convs] == ["q0", "q1", "q2", "q3"]  # records with no chat turn skipped
    assert convs[0] == [{"role": "assistant", "content": "q0"}, {"role": "assistant", "content": "a0"}]
    assert convs[1] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    with pytest.raises(ValueError, match="only 5 conversations"):
        tf.load_conversations(str(src), 6)  # the sixth record is cut off


def test_extract_round_trip_through_the_tool(tmp_path):
    src, small = tmp_path / "sharegpt.json", tmp_path / "small.json"
    _sharegpt(src, 8)
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fp8_accuracy.py"), "--conversations", str(src),
                        "--num-conversations", "5", "--extract", str(small)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert tf.load_conversations(str(small), 5) == tf.load_conversations(str(src), 5)
    with pytest.raises(ValueError, match="only 5"):
        tf.load_conversations(str(small), 6)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a ShareGPT"):
        tf.load_conversations(str(tmp_path / "bad.json"), 1)


def test_perplexity_and_top1_agreement():
    a = [tf.Scored(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([5, 6])),
         tf.Scored(torch.tensor([3.0], dtype=torch.float64), torch.tensor([7]))]
    b = [tf.Scored(torch.zeros(2, dtype=torch.float64), torch.tensor([5, 0])),
         tf.Scored(torch.zeros(1, dtype=torch.float64), torch.tensor([7]))]
    assert tf.perplexity(a) == pytest.approx(math.exp(2.0))  # mean over positions, not conversations
    assert tf.top1_agreement(a, b) == pytest.approx(2 / 3)
