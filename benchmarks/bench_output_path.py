"""Host cost of the per-step output path, on the CPU, no model and no sockets.

N streaming requests decode one token per step (real SmolLM2 tokenizer, real text). Each
step is timed stage by stage: the scheduler's OutputSender.send, the message's encode +
decode (what the zmq hop costs besides the copy), the DetokenizerManager, the BatchStrOut's
encode + decode, and the TokenizerManager's receive handling into per-request state.

    python benchmarks/bench_output_path.py            # N = 256, 1024, 4096
    python benchmarks/bench_output_path.py --sizes 1024 --steps 50

Prints the median µs per step and per request of each stage (with --stream-interval N, the
mean over steps, since most steps then send nothing). Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Dict, List

from sglserve.detokenizer.detokenizer_manager import DetokenizerManager
from sglserve.io_struct import BatchStrOut, BatchTokenIDOut
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.scheduler.output_sender import OutputSender
from sglserve.scheduler.schedule_batch import Req
from sglserve.server_args import default_model_path
from sglserve.tokenizer.req_state import ReqState
from sglserve.tokenizer.tokenizer_manager import TokenizerManager
from sglserve.utils.hf_transformers_utils import get_tokenizer
from sglserve.utils.zmq_queue import decode, encode

TEXT = ("The quick brown fox jumps over the lazy dog while 你好世界 and café résumé 🎉 show up; "
        "numbers 12345, code `x = f(y)`, and a newline\nthen more words to stream along. ") * 20
STAGES = ("send", "codec_ids", "detok", "codec_strs", "receive")


def make_reqs(n: int, vocab_text: List[int]) -> List[Req]:
    reqs = []
    for i in range(n):
        sp = SamplingParams(max_new_tokens=10**6, stop=["</end>"] if i % 4 == 0 else None)
        sp.verify()
        req = Req(f"req-{i}", vocab_text[i % 50: i % 50 + 200], sp, 10**6, set(), stream=True)
        reqs.append(req)
    return reqs


def make_receiver(reqs: List[Req], tokenizer: Any) -> TokenizerManager:
    """A TokenizerManager with only what its receive path reads (no sockets)."""
    tm = TokenizerManager.__new__(TokenizerManager)
    tm.metrics = None
    tm.rid_to_state = {r.rid: ReqState(r.rid, True, time.time(), tokenizer=tokenizer) for r in reqs}
    return tm


def run(n: int, steps: int, tokenizer: Any, ids: List[int], stream_interval: int = 1) -> Dict[str, float]:
    reqs = make_reqs(n, ids)
    sent: List[BatchTokenIDOut] = []
    sender = OutputSender(sent.append, stream_interval)
    detok = DetokenizerManager(tokenizer)
    tm = make_receiver(reqs, tokenizer)
    times: Dict[str, List[float]] = {s: [] for s in STAGES}
    clock = time.perf_counter
    for step in range(steps):
        for k, req in enumerate(reqs):
            req.output_ids.append(ids[(k * 7 + step) % len(ids)])
        t0 = clock()
        sender.send(reqs)
        t1 = clock()
        if sent:
            msg = decode(encode(sent.pop()))
            t2 = clock()
            strs: BatchStrOut = detok.handle_batch_token_id_out(msg)
            t3 = clock()
            strs = decode(encode(strs))
            t4 = clock()
            tm._handle_batch_str_out(strs)
            t5 = clock()
        else:  # --stream-interval: no news this step
            t2 = t3 = t4 = t5 = t1
        if step >= 2:  # the first steps carry one-off work (first message of each request)
            for name, a, b in zip(STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
                times[name].append(b - a)
    summary = statistics.median if stream_interval == 1 else statistics.mean
    return {name: summary(v) * 1e6 for name, v in times.items()}


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--stream-interval", type=int, default=1)
    args = ap.parse_args(argv)
    tokenizer = get_tokenizer(default_model_path())
    ids = tokenizer.encode(TEXT)
    print(f"{'N':>5} " + " ".join(f"{s + ' µs/step':>18}" for s in STAGES) + f" {'total µs/req':>13}")
    for n in args.sizes:
        t = run(n, args.steps, tokenizer, ids, args.stream_interval)
        per_req = " ".join(f"{t[s]:>9.0f} ({t[s] / n:5.2f})" for s in STAGES)
        print(f"{n:>5} {per_req} {sum(t.values()) / n:>13.2f}")
    print("(each cell: median µs per step, and in parentheses µs per request)")


if __name__ == "__main__":
    main()
