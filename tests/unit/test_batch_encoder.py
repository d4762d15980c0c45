"""BatchEncoder: the ids tokenizer.encode gives, texts of one loop tick in one call, errors and
cancellations delivered to their own request only."""

from __future__ import annotations

import asyncio


from sglserve.tokenizer.batch_encoder import MAX_BATCH, BatchEncoder


class Counting:
    """A tokenizer wrapper that counts its batch calls."""

    def __init__(self, tokenizer, fail_on: str = "") -> None:
        self.tokenizer, self.calls, self.fail_on = tokenizer, [], fail_on

    def __call__(self, texts, add_special_tokens=True):
        self.calls.append(len(texts))
        if self.fail_on in texts:
            raise RuntimeError("boom")
        return self.tokenizer(texts, add_special_tokens=add_special_tokens)


TEXTS = [f"Request {i}: the capital of France is Paris. 你好 🎉" for i in range(2 * MAX_BATCH + 5)]


def test_same_ids_as_encode_and_one_call_per_batch(tokenizer):
    counting = Counting(tokenizer)
    enc = BatchEncoder(counting)

    async def main():
        with_special = [enc.encode([t]) for t in TEXTS]
        without = enc.encode(TEXTS[:3], add_special_tokens=False)
        return await asyncio.gather(*with_special), await without

    with_special, without = asyncio.run(main())
    assert [ids for [ids] in with_special] == [tokenizer.encode(t) for t in TEXTS]
    assert without == [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS[:3]]
    assert sum(counting.calls) == len(TEXTS) + 3
    assert len(counting.calls) <= 4 and max(counting.calls) <= MAX_BATCH  # batched, and bounded


def test_error_and_cancellation_stay_with_their_batch(tokenizer):
    enc = BatchEncoder(Counting(tokenizer, fail_on="bad"))

    async def main():
        bad = asyncio.ensure_future(enc.encode(["bad"]))
        gone = asyncio.ensure_future(enc.encode(["gone"]))
        await asyncio.sleep(0)
        gone.cancel()
        results = await asyncio.gather(bad, gone, return_exceptions=True)
        return results, await enc.encode(["fine"])  # the encoder goes on

    (bad, gone), fine = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and isinstance(gone, asyncio.CancelledError)
    assert fine == [tokenizer.encode("fine")]


def test_a_new_event_loop_is_not_stuck_behind_a_closed_one(tokenizer):
    enc = BatchEncoder(tokenizer)

    async def abandon():  # the loop ends with a batch still in the worker
        asyncio.ensure_future(enc.encode(["left behind"]))
        await asyncio.sleep(0)

    asyncio.run(abandon())
    assert asyncio.run(asyncio.wait_for(enc.encode(["next"]), 5)) == [tokenizer.encode("next")]
