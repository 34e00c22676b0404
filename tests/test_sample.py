"""KV-cache sampling with continuous batching against full forwards without a cache and against
each prompt sampled alone, on the tiny preset in float32; graded sample records."""
import pytest
import torch
import torch.nn.functional as F

import e2h.sample as sample_mod
from data.format import format_prompt
from e2h.kv_cache import KVCache
from e2h.model import ModelArgs, Transformer
from e2h.infra import distributed as dist
from e2h.sample import (Progress, Sample, filter_logits, generate, inverse_cdf, pair_seeds,
                        sample_solutions)
from e2h.tokenizer import train_tokenizer

PROMPTS = [[1, 5, 9], [1, 7, 3, 12, 40, 8, 2], [1, 30, 31, 32, 33]]   # lengths 3, 7, 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelArgs.from_name("tiny"))
    m.init_weights(std=0.3)   # peaked distributions: greedy ties are impossible in practice
    return m.eval()


def full_logps(model, prompt, completion, temperature):
    """log p(completion[t] | prompt + completion[:t]) from one forward without a cache."""
    tokens = torch.tensor([prompt + completion])
    logits = model(tokens)[0, len(prompt) - 1:-1]                  # (T, V) predicting completion
    if temperature > 0:
        logits = logits / temperature
    return F.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def greedy_without_cache(model, prompt, steps):
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(model(torch.tensor([tokens]))[0, -1].argmax().item())
    return tokens[len(prompt):]


def test_cached_decode_equals_full_forward(model):
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    full = model(tokens)                                           # (2, 10, V)
    cache = KVCache(model.args, 2, 10, torch.float32, "cpu")
    steps = [model(tokens[:, :4], cache=cache)]                    # prefill 4, then 1 at a time
    steps += [model(tokens[:, t:t + 1], cache=cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)


def test_greedy_equals_argmax_loop_without_cache(model):
    out = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0)
    again = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0)
    for prompt, s, s2 in zip(PROMPTS, out, again):
        assert s.tokens == greedy_without_cache(model, prompt, 6)
        assert (s.tokens, s.logps) == (s2.tokens, s2.logps)        # deterministic
        assert not s.finished                                      # cut by length, no EOS


@pytest.mark.parametrize("max_rows", [64, 2, 1])
def test_batched_prompts_of_different_lengths_equal_each_alone(model, max_rows):
    batched = generate(model, PROMPTS, max_new_tokens=8, temperature=0.0, max_rows=max_rows)
    for prompt, s in zip(PROMPTS, batched):
        alone = generate(model, [prompt], max_new_tokens=8, temperature=0.0)[0]
        assert s.tokens == alone.tokens
        torch.testing.assert_close(torch.tensor(s.logps), torch.tensor(alone.logps),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature, top_k, top_p, max_rows", [
    (0.0, None, None, 64), (0.7, 10, None, 64), (1.3, None, 0.9, 64), (1.0, None, None, 2)])
def test_logps_equal_full_forward_at_same_temperature(model, temperature, top_k, top_p, max_rows):
    g = torch.Generator().manual_seed(2)
    out = generate(model, PROMPTS, max_new_tokens=7, temperature=temperature, top_k=top_k,
                   top_p=top_p, n=2, generator=g, max_rows=max_rows)
    assert len(out) == 6
    for i, s in enumerate(out):
        expected = full_logps(model, PROMPTS[i // 2], s.tokens, temperature)   # prompt-major
        torch.testing.assert_close(torch.tensor(s.logps), expected, rtol=0, atol=1e-5)


def spy_on_forwards(model, monkeypatch):
    """Record the (rows, tokens) of every forward and the (rows, slots) of every KVCache."""
    forwards, caches = [], []
    hidden = model.hidden

    def spy(tokens, positions=None, cache=None):
        forwards.append(tuple(tokens.shape))
        return hidden(tokens, positions, cache)

    class CountingCache(KVCache):
        def __init__(self, args, batch, max_len, *rest):
            super().__init__(args, batch, max_len, *rest)
            caches.append((batch, max_len))

    monkeypatch.setattr(model, "hidden", spy)
    monkeypatch.setattr(sample_mod, "KVCache", CountingCache)
    return forwards, caches


def test_n_samples_share_one_prefill_and_one_cache(model, monkeypatch):
    forwards, caches = spy_on_forwards(model, monkeypatch)
    generate(model, PROMPTS, max_new_tokens=5, n=4, generator=torch.Generator().manual_seed(3))
    # one prefill of the 3 prompts (longest 7), then 4 decode steps of 3 * 4 rows
    assert forwards == [(3, 7)] + [(12, 1)] * 4
    assert caches == [(12, 7 + 5), (3, 7)]          # the rows' cache, then the prefill's


def test_finished_rows_are_refilled(model, monkeypatch):
    forwards, caches = spy_on_forwards(model, monkeypatch)
    out = generate(model, PROMPTS, max_new_tokens=5, n=2, temperature=0.0, max_rows=2)
    # 6 sequences of 5 tokens through 2 rows: prompt 0 fills both rows (one prefill), 4 decode
    # steps; both end together and prompt 1 takes them, then prompt 2
    assert forwards == ([(1, 3)] + [(2, 1)] * 4 + [(1, 7)] + [(2, 1)] * 4
                        + [(1, 5)] + [(2, 1)] * 4)
    assert caches == [(2, 7 + 5), (1, 3), (1, 7), (1, 5)]
    assert [len(s.tokens) for s in out] == [5] * 6


def test_a_row_ended_by_eos_takes_the_next_prompt_and_the_tail_shrinks(model, monkeypatch):
    free = [generate(model, [p], max_new_tokens=6, temperature=0.0)[0] for p in PROMPTS]
    eos = free[0].tokens[2]                                        # prompt 0 ends at token 3
    assert eos not in free[0].tokens[:2] and eos not in free[1].tokens + free[2].tokens
    forwards, _ = spy_on_forwards(model, monkeypatch)
    out = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0, eos_id=eos, max_rows=2)
    # prompts 0 and 1 fill the rows; prompt 0 ends after its 3rd token, the next decode step
    # still runs both rows, then prompt 2 takes row 0. Prompt 1 ends 3 tokens later, and
    # prompt 2 finishes its last 3 tokens in a batch of 1.
    assert forwards == ([(2, 7)] + [(2, 1)] * 3 + [(1, 5)] + [(2, 1)] * 2 + [(1, 1)] * 3)
    assert out[0].tokens == free[0].tokens[:3] and out[0].finished
    for s, alone in zip(out, [Sample(free[0].tokens[:3], free[0].logps[:3]), *free[1:]]):
        assert s.tokens == alone.tokens and s.finished == (s is out[0])
        torch.testing.assert_close(torch.tensor(s.logps), torch.tensor(alone.logps),
                                   rtol=0, atol=1e-5)


def test_looking_for_finished_rows_every_few_steps_changes_nothing(model, monkeypatch):
    # On a GPU the done flags are read every CHECK_DONE_EVERY steps: finished rows decode a few
    # idle steps into their spare slots before they are refilled.
    free = generate(model, PROMPTS[:1], max_new_tokens=6, temperature=0.0)[0]
    run = lambda: generate(model, PROMPTS, max_new_tokens=6, n=3, eos_id=free.tokens[2],  # noqa: E731
                           max_rows=2, generator=torch.Generator().manual_seed(7))
    every_step = run()
    monkeypatch.setattr(sample_mod, "_check_every", lambda device, stop_fn: 4)
    every_4th = run()
    assert {s.finished for s in every_step} == {True, False}       # both kinds of ending
    assert [(s.tokens, s.finished) for s in every_4th] == [(s.tokens, s.finished) for s in every_step]
    for a, b in zip(every_4th, every_step):
        torch.testing.assert_close(torch.tensor(a.logps), torch.tensor(b.logps), rtol=0, atol=1e-5)


def test_a_seed_reproduces_samples_whatever_the_number_of_rows(model):
    run = lambda seed, rows: generate(model, PROMPTS, max_new_tokens=6, n=4, max_rows=rows,  # noqa: E731
                                      generator=torch.Generator().manual_seed(seed))
    first = run(3, 12)
    assert [(s.tokens, s.logps) for s in run(3, 12)] == [(s.tokens, s.logps) for s in first]
    for rows in (5, 1):                    # each sample draws from its own stream
        again = run(3, rows)
        assert [s.tokens for s in again] == [s.tokens for s in first]
        torch.testing.assert_close(torch.tensor([s.logps for s in again]),
                                   torch.tensor([s.logps for s in first]), rtol=0, atol=1e-5)
    assert [s.tokens for s in run(4, 12)] != [s.tokens for s in first]
    assert len({tuple(s.tokens) for s in first[:4]}) > 1           # independent draws
    # a share of the prompts with its pairs' seeds samples what the whole call did (a rank's share)
    seeds = pair_seeds(12, torch.Generator().manual_seed(3))
    share = generate(model, PROMPTS[1:], max_new_tokens=6, n=4, seeds=seeds[4:])
    assert [s.tokens for s in share] == [s.tokens for s in first[4:]]
    with pytest.raises(ValueError, match="3 seeds for 8"):
        generate(model, PROMPTS[1:], max_new_tokens=6, n=4, seeds=seeds[:3])


def test_progress_counts_a_problem_when_its_last_sample_is_done(monkeypatch):
    progress = Progress("sampling", [0, 0, 1, 2])      # problem of each sample
    progress.done([0])
    progress.done([])
    assert (progress.problems, progress.bar.n) == (0, 1)
    progress.done([2, 1])                               # problem 1, then problem 0 complete
    assert (progress.problems, progress.bar.n) == (2, 3)
    assert progress.bar.postfix.startswith("2/3 problems, ") and "problems/s" in progress.bar.postfix
    progress.close()
    monkeypatch.setattr(dist, "is_main", lambda: False)
    assert Progress("sampling", [0]).bar.disable          # ranks other than 0 stay silent


def test_inverse_cdf_by_hand():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]])
    # cumulative 0.5, 0.5, 0.8, 1.0: u in [0, 0.5) -> 0, [0.5, 0.8) -> 2 (never the empty 1),
    # [0.8, 1) -> 3
    u = torch.tensor([0.0, 0.49, 0.5, 0.79, 0.8, 1 - 2**-24])
    assert inverse_cdf(probs.expand(6, 4), u).tolist() == [0, 0, 2, 2, 3, 3]
    # 1000 evenly spread uniforms land in proportion to the probabilities
    u = (torch.arange(1000) + 0.5) / 1000
    counts = torch.bincount(inverse_cdf(probs.expand(1000, 4), u), minlength=4)
    assert counts.tolist() == [500, 0, 300, 200]
    # unnormalized, with an empty last token: u is scaled by the total (0.4), and even the
    # largest uniform stays below it
    row = torch.tensor([[0.2, 0.2, 0.0]])
    assert inverse_cdf(row.expand(3, 3), torch.tensor([0.49, 0.5, 1 - 2**-24])).tolist() == [0, 1, 1]


def test_top_k_1_equals_greedy(model):
    greedy = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0)
    top1 = generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, top_k=1,
                    generator=torch.Generator().manual_seed(5))
    assert [s.tokens for s in top1] == [s.tokens for s in greedy]
    assert [s.logps for s in top1] == [s.logps for s in greedy]   # T = 1: same distribution


def test_eos_stops_one_sequence_and_the_others_go_on(model):
    free = generate(model, PROMPTS[:2], max_new_tokens=6, temperature=0.0)
    # an EOS id that row 0 produces at step 2 (first time) and row 1 never produces
    eos = free[0].tokens[2]
    assert eos not in free[0].tokens[:2] and eos not in free[1].tokens
    out = generate(model, PROMPTS[:2], max_new_tokens=6, temperature=0.0, eos_id=eos)
    assert out[0].tokens == free[0].tokens[:3] and out[0].finished
    assert out[0].logps == free[0].logps[:3]
    assert out[1].tokens == free[1].tokens and not out[1].finished


def test_stop_fn_ends_a_sequence_after_the_matching_token(model):
    free = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0)
    stop_after, last = free[1].tokens[:4], free[2].tokens        # the last token counts too
    out = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0,
                   stop_fn=lambda ids: ids in (stop_after, last))
    assert out[1].tokens == stop_after and out[1].finished
    assert out[2].tokens == last and out[2].finished
    assert out[0].tokens == free[0].tokens and not out[0].finished


def test_filter_logits_top_k_then_top_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    inf = float("-inf")
    # top-k 3 drops the last token
    kept = filter_logits(logits, 3, None)
    assert kept[0, 3].item() == inf and torch.equal(kept[0, :3], logits[0, :3])
    # top-p 0.7: mass above token 1 is 0.5 < 0.7 (kept), above token 2 is 0.8 > 0.7 (dropped)
    kept = filter_logits(logits, None, 0.7)
    assert kept[0, 2:].tolist() == [inf, inf] and torch.equal(kept[0, :2], logits[0, :2])
    # top-p 0.4: the most likely token is always kept
    assert torch.isinf(filter_logits(logits, None, 0.4)[0]).tolist() == [False, True, True, True]


def test_bad_max_rows():
    with pytest.raises(ValueError, match="max_rows >= 1"):
        generate(Transformer(ModelArgs.from_name("tiny")), [[1]], 2, max_rows=0)


def test_training_mode_is_restored(model):
    model.train()
    generate(model, [[1, 2]], max_new_tokens=2, temperature=0.0)
    assert model.training
    model.eval()
    generate(model, [[1, 2]], max_new_tokens=2, temperature=0.0)
    assert not model.training


def test_the_cache_holds_the_autocast_dtype(model, monkeypatch):
    # under autocast, keys and values come out of the projections in bf16 while the master
    # weights stay float32: a float32 cache would hand attention mixed dtypes (the CUDA kernel
    # refuses them), so the cache takes the autocast dtype
    dtypes = []
    real = sample_mod.KVCache

    def recording(args, batch, max_len, dtype, device):
        dtypes.append(dtype)
        return real(args, batch, max_len, dtype, device)
    monkeypatch.setattr(sample_mod, "KVCache", recording)
    with torch.autocast("cpu", torch.bfloat16):
        generate(model, [[1, 5, 6]], 3, temperature=0.0)
    generate(model, [[1, 5, 6]], 3, temperature=0.0)
    assert dtypes[0] == torch.bfloat16 and dtypes[-1] == torch.float32


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [format_prompt("Start at 7.") + "7 + 5 = 12\n\n# Answer\n\n12"] * 20
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=60)


PROBLEMS = [{"id": "a", "question": "Start at 7.", "answer": "12", "level": 1},
            {"id": "b", "question": "Start at 8.", "answer": "13", "level": 4},
            {"id": "c", "question": "Start at 9.", "answer": "14", "level": 5}]


def test_sample_solutions_records(tok, monkeypatch):
    calls = []

    def fake_generate(model, prompts, max_new_tokens, temperature, top_k, n, eos_id, stop_fn, generator,
                      max_rows, seeds):
        calls.append((len(prompts), n, temperature, top_k, eos_id, max_rows))
        assert prompts == [tok.encode(format_prompt(p["question"]), bos=True) for p in PROBLEMS]
        # sample 0 answers 12 and ends with EOS; sample 1 is cut by the length limit
        return [Sample(tok.encode("7 + 5 = 12\n\n# Answer\n\n12", eos=True)) if i % 2 == 0
                else Sample(tok.encode("7 + 5 = 1")) for i in range(len(prompts) * n)]

    monkeypatch.setattr(sample_mod, "generate", fake_generate)
    samples = sample_solutions(None, tok, PROBLEMS, n=2, temperature=0.7, top_k=20,
                               max_new_tokens=512, batch_size=2)
    # every problem streams through one call, on batch_size x n rows
    assert calls == [(3, 2, 0.7, 20, tok.eos_id, 4)]
    assert [x["id"] for x in samples] == ["a", "a", "b", "b", "c", "c"]        # problem-major
    assert samples[0]["completion"] == "7 + 5 = 12\n\n# Answer\n\n12"          # no EOS text
    assert [x["answer"] for x in samples[:2]] == ["12", None]
    assert [x["correct"] for x in samples] == [True, False, False, False, False, False]
    assert [x["level"] for x in samples[::2]] == [1, 4, 5]
