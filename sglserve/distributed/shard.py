"""How a model's heads and dims split over tensor-parallel ranks, and the check that they can.

Query heads, the MLP's intermediate size and the vocab are split evenly (the vocab padded up
to a multiple of tp). KV heads are split when there are at least tp of them, else each rank
keeps one KV head, shared by tp / num_kv_heads neighbouring ranks (replicated), so a rank's
query heads always see the KV head they belong to.
"""

from __future__ import annotations

from typing import List, Optional


def divide(n: int, tp: int) -> int:
    if n % tp:
        raise ValueError(f"{n} is not divisible by the tensor parallel size {tp}")
    return n // tp


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    return max(1, num_kv_heads // tp)


def kv_head_start(num_kv_heads: int, tp: int, rank: int) -> int:
    """The first KV head rank `rank` holds."""
    if num_kv_heads >= tp:
        return rank * (num_kv_heads // tp)
    return rank // (tp // num_kv_heads)  # replicated: tp/kv ranks share one head


def padded_vocab(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


def tp_shape_problems(num_heads: int, num_kv_heads: int, intermediate_size: Optional[int], tp: int) -> List[str]:
    """Why this model cannot run at this tensor parallel size ([] when it can)."""
    problems = []
    if num_heads % tp:
        problems.append(f"num_attention_heads={num_heads} is not divisible by it")
    if num_kv_heads % tp and tp % num_kv_heads:
        problems.append(f"num_key_value_heads={num_kv_heads} neither divides it nor is divisible by it")
    if intermediate_size is not None and intermediate_size % tp:
        problems.append(f"intermediate_size={intermediate_size} is not divisible by it")
    return problems


def valid_tp_sizes(num_heads: int, num_kv_heads: int, intermediate_size: Optional[int], limit: int = 16) -> List[int]:
    return [t for t in range(1, limit + 1) if not tp_shape_problems(num_heads, num_kv_heads, intermediate_size, t)]


def check_tp_shapes(num_heads: int, num_kv_heads: int, intermediate_size: Optional[int], tp: int) -> None:
    """Raise with the reason and the sizes that would work."""
    problems = tp_shape_problems(num_heads, num_kv_heads, intermediate_size, tp)
    if problems:
        ok = valid_tp_sizes(num_heads, num_kv_heads, intermediate_size)
        raise ValueError(f"--tp-size={tp} does not fit the model: {'; '.join(problems)}. "
                         f"Tensor parallel sizes this model allows: {ok}")
