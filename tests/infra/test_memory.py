"""e2h/infra/footprint.py and e2h/memory.py: parameter counts, activation bytes and plans written
out by hand for the tiny shape; the activation count against the tensors autograd actually
saves; the CLI and the start-up line."""
import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e2h.infra import footprint
from e2h import memory, memory_check
from e2h.infra.footprint import Model
from e2h.memory import Setup
from e2h.model import ModelArgs, Transformer
from e2h.rm import RewardModel, rm_loss
from e2h.sft import freeze_embeddings, sft_loss

TINY = ModelArgs.from_name("tiny")   # C 32, L 2, H 4, Hkv 2, D 8, F 64, V 64


def test_parameter_counts_by_hand():
    # a block: q, o 32x32; k, v 32x16; gate, up, down 32x64; two norms of 32
    linear = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64           # 9216
    assert linear == 9216
    c = Model(TINY).counts()
    assert c["block"] == 9216 + 64 == 9280
    assert c["root"] == 64 * 32 + 32 + 64 * 32 == 4128          # embeddings, final norm, head
    assert c["total"] == 2 * 9280 + 4128 == 22688
    assert c["trained"] == 2 * 9216 == 18432                    # frozen: only the Linear layers
    assert c["linear"] == 2 * 9216 + 2048
    model = Transformer(TINY)
    assert sum(p.numel() for p in model.parameters()) == c["total"]
    freeze_embeddings(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == c["trained"]
    # a reward model on the policy: + score (32 + 1), the LM head kept and never trained
    rm = Model(TINY, head="score", frozen_embeddings=False).counts()
    assert rm["total"] == 22688 + 33 and rm["trained"] == 22688 + 33 - 2048
    assert Model(TINY, head="score", lm_head=False).counts()["total"] == 22688 - 2048 + 33


def test_activation_bytes_by_hand():
    # 2 rows x 16 tokens = 32 tokens, float32, PyTorch attention (CPU), embeddings frozen
    per_token = ((4 * 32 + 4)          # block input, fp32, and its rsqrt
                 + 5 * 4 * 32          # normed x, q, attention out, its copy, normed h
                 + 2 * 4 * 16          # k, v
                 + 4 * 4               # log-sum-exp per head
                 + (4 * 32 + 4)        # h and its rsqrt
                 + 4 * 4 * 64)         # gate, silu, up, product
    assert per_token == 2072
    block = 32 * 2072 + 4 * 16 * 16 + 16                     # + float mask (1,1,16,16), bool (1,1,16,1)
    outside = (2 * 4 * 2 * 16 * 8                            # cos, sin
               + 32 * (4 * 32 + 4)                           # final norm input and rsqrt
               + 32 * (4 * 64 + 8) + 8 * 2 * 15 + 4)         # logits, tokens, two (2, 15), loss
    first = 32 * (4 * 32 + 4)                                # block 0's input needs no gradient
    expected = 2 * block - first + outside
    assert expected == 2 * 67344 - 4224 + 14964 == 145428
    assert footprint.saved_activations(Model(TINY), 2, 16, 4, cpu_attention=True) == expected
    # the backward's three fp32 logits-sized temporaries on top
    assert footprint.activation_peak(Model(TINY), 2, 16, 4, False, True) == expected + 3 * 4 * 64 * 32
    # checkpointing: each block keeps its (2, 16, 32) input, then one block and its FFN grads
    kept = 2 * 4 * 32 * 32 + 2 * 4 * 2 * 16 * 8
    one_block = block + 3 * 4 * 64 * 32
    head = outside - 2 * 4 * 2 * 16 * 8 + 3 * 4 * 64 * 32
    assert footprint.activation_peak(Model(TINY), 2, 16, 4, True, True) == kept + max(head, one_block)


def saved_bytes(model, loss_fn) -> int:
    """Bytes of the distinct storages autograd saves for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(model)
    return sum(seen.values())


@pytest.mark.parametrize("layers,frozen,head", [(1, True, "lm"), (3, True, "lm"), (2, False, "lm"),
                                                (2, True, "score"), (2, False, "score")])
def test_activation_count_is_what_autograd_saves(layers, frozen, head):
    args = ModelArgs(dim=64, n_layers=layers, n_heads=4, n_kv_heads=2, ffn_dim=160,
                     vocab_size=100, max_seq_len=64)
    torch.manual_seed(0)
    tokens = torch.randint(0, 100, (3, 20))
    model = Transformer(args) if head == "lm" else RewardModel(Transformer(args))
    if frozen:
        freeze_embeddings(model)
    if head == "lm":
        fn = lambda m: sft_loss(m(tokens), tokens, torch.ones_like(tokens))[0]
    else:
        labels, weights = torch.ones(3, 20), torch.ones(3, 20)
        fn = lambda m: rm_loss(m(tokens), labels, weights)[0]
    plan = Model(args, head=head, frozen_embeddings=frozen)
    assert saved_bytes(model, fn) == footprint.saved_activations(plan, 3, 20, 4, cpu_attention=True)


def test_kv_cache_bytes_by_hand():
    # k and v, 2 layers, 3 rows, 2 kv heads, head dim 8, 10 slots, bf16
    assert footprint.kv_cache(TINY, 3, 10, 2) == 2 * 2 * 3 * 2 * 8 * 10 * 2 == 3840
    from e2h.kv_cache import KVCache
    cache = KVCache(TINY, 3, 10, torch.bfloat16, "cpu")
    assert sum(t.numel() * t.element_size() for t in cache.k + cache.v) == 3840


def test_sft_plan_by_hand():
    # tiny policy, 2 ranks under FSDP2, bf16 compute, micro-batch 1 x 8 tokens, no runtime
    st = Setup("sft", Model(TINY), world=2, fsdp=True, compute_bytes=2, micro_batch=1, seq_len=8,
               runtime=0)
    out = memory.plan(st)
    params, grads, adam = 4 * 22688 // 2, 4 * 18432 // 2, 8 * 18432 // 2
    rows = dict(out["rows"])
    assert rows["policy: parameters (fp32, 1/2)"] == params == 45376
    assert rows["policy: gradients (fp32, 1/2)"] == grads == 36864
    assert rows["policy: AdamW state (fp32, 1/2)"] == adam == 73728
    # FSDP2: the root (4128 parameters) gathered in bf16, one block x (3 x 2 + 4) bytes
    assert rows["FSDP2 working set"] == 4128 * 2 + 9280 * 10 == 101056
    acts = footprint.activation_peak(Model(TINY), 1, 8, 2, False)
    assert out["state"] == params + adam
    assert out["phases"]["train"] == params + adam + grads + acts + 101056
    assert out["phases"]["export"] == params + adam + 4 * 64 * 32   # one (64, 32) tensor
    assert out["peak"] == out["phases"]["train"] and out["phase"] == "train"
    # twice the ranks: the sharded state halves
    four = memory.plan(Setup(**{**st.__dict__, "world": 4}))
    assert four["state"] == 4 * 22688 // 4 + 8 * 18432 // 4


def test_ppo_plan_counts_four_models_and_the_rollout():
    rm = Model(TINY, head="score", trained=False, lm_head=False)
    st = Setup("ppo", Model(TINY), rm, world=2, fsdp=True, compute_bytes=2, micro_batch=1,
               seq_len=8, sample_rows=3, runtime=0)
    out = memory.plan(st)
    rows = dict(out["rows"])
    rm_total, rm_trained = 22688 - 2048 + 33, 2 * 9216 + 33
    assert rows["reference (frozen): parameters (fp32, 1/2)"] == 4 * 22688 // 2
    assert rows["value: AdamW state (fp32, 1/2)"] == 8 * rm_trained // 2
    assert rows["reward (frozen): parameters (fp32, 1/2)"] == 4 * rm_total // 2
    state = (4 * 22688 + 8 * 18432 + 4 * 22688 + 4 * rm_total + 8 * rm_trained + 4 * rm_total) // 2
    assert out["state"] == state
    gathered = 22688 * 2                                    # the policy, whole, in bf16
    cache = 2 * 2 * 3 * 2 * 8 * 8 * 2                       # 3 rows x 8 slots
    decode = 4 * 4 * 64 * 3                                 # four fp32 (3, 64) logits
    scoring = 4 * 4 * 64 * 3 * 8                            # ... of three whole rows
    assert rows["sampling: gathered policy (bf16)"] == gathered
    assert out["phases"]["sample"] == state + max(gathered + cache + decode, scoring)
    # greedy validation on 5 rows (--eval-batch-size) holds more rows than sampling's 3
    more = memory.plan(Setup(**{**st.__dict__, "eval_rows": 5}))
    rows = dict(more["rows"])
    cache5, decode5 = 2 * 2 * 5 * 2 * 8 * 8 * 2, 4 * 4 * 64 * 5
    assert rows["sampling: KV cache, 5 rows x 8 slots"] == cache5
    assert more["phases"]["sample"] == state + max(gathered + cache5 + decode5, scoring)


def test_summary_line_and_refusal():
    out = {"peak": 3 * memory.GiB, "phases": {"train": 3 * memory.GiB}}
    line, fits = memory.summary(out, 4 * memory.GiB, "cuda:0")
    assert fits and line == ("memory plan: 3.0 GiB per rank at peak (train 3.0 GiB); cuda:0 has "
                             "4.0 GiB: fits")
    line, fits = memory.summary(out, 2 * memory.GiB, "cuda:0")
    assert not fits and "does not fit; try --activation-checkpointing" in line


def test_for_run_on_cpu_and_the_cli(tmp_path, capsys):
    args = argparse.Namespace(algo="sft", model=None, policy=None, reward_model=None,
                              preset="tiny", unfreeze_embeddings=False, hard_threshold=None,
                              dtype="auto", micro_batch_size=2, batch_size=4, max_len=64,
                              sample_batch_size=16, eval_batch_size=16, n_samples=None,
                              activation_checkpointing=False,
                              samples=None, no_process_reward=False, eval_problems=0,
                              test_problems=0, hparams="embedded")
    line, fits, tight = memory_check.for_run(args, torch.device("cpu"))
    assert fits and line.startswith("memory plan: ") and "the host's RAM has" in line
    assert not tight   # a tiny model: malloc may keep what it frees
    # from a checkpoint: its config.json's shape, the paper's freezing
    from e2h.hf.checkpoint import save_model
    save_model(Transformer(TINY), tmp_path / "ckpt")
    args.model = str(tmp_path / "ckpt")
    st = memory_check.setup_for(args, torch.device("cpu"))
    assert st.policy == Model(TINY) and not st.fsdp and st.compute_bytes == 4 and st.cpu
    memory.main(["--algo", "ppo", "--preset", "llemma-7b", "--world", "8"])
    table = capsys.readouterr().out
    assert "value: AdamW state (fp32, 1/8)" in table and "80 GB" in table and "141 GB" in table
    assert "peak with checkpointing" in table and "peak without checkpointing" in table


def test_for_run_is_tight_where_malloc_could_keep_too_much(monkeypatch):
    """On CPU a plan is tight when it fits but 2.1 times it (what glibc's arenas were measured
    to keep, bench/README.md "Memory") does not: only then must freed tensors go back."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    monkeypatch.setattr(memory_check, "setup_for", lambda args, device: None)
    verdicts = {}
    for share in (0.2, 0.46, 0.49, 0.9, 1.1):
        peak = int(share * ram)
        monkeypatch.setattr(memory, "plan", lambda st, peak=peak: {"peak": peak,
                                                                   "phases": {"train": peak}})
        verdicts[share] = memory_check.for_run(None, torch.device("cpu"))[1:]
    # 2.1 x 0.46 = 0.966 < 1: room for the arenas; 2.1 x 0.49 = 1.029 > 1: tight; 1.1 > 1: no fit
    assert verdicts == {0.2: (True, False), 0.46: (True, False), 0.49: (True, True),
                        0.9: (True, True), 1.1: (False, True)}


def test_train_refuses_a_run_that_cannot_fit(tmp_path):
    """A 34B model trained from scratch in one CPU process needs over 500 GiB: train.py says so
    in one line and exits 1 before it reads or builds anything."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "train.py", "--algo", "sft", "--preset", "llemma-34b",
                             "--out", str(tmp_path / "run")], cwd=root, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: memory plan: ") and "does not fit" in last
    assert not (tmp_path / "run").exists()


HEAP_PROBE = """
import os, sys, torch
from e2h.infra.host import return_freed_memory
def heap_mib():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            a, b = line.split()[0].split("-")
            return (int(b, 16) - int(a, 16)) / 2**20
print(return_freed_memory())
big = torch.ones(4 << 20, dtype=torch.uint8); del big   # glibc raises its threshold to 4 MB
before = heap_mib()
blocks = [torch.ones(1 << 20, dtype=torch.uint8) for _ in range(100)]   # 100 MB in 1 MB tensors
print(heap_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
@pytest.mark.parametrize("env", [{}, {"MALLOC_MMAP_THRESHOLD_": "999999999"}])
def test_return_freed_memory_maps_large_tensors(env):
    """After a large free glibc serves 1 MB tensors from its heap, where freed memory stays;
    with return_freed_memory each gets its own mapping and the heap does not grow. A user's
    MALLOC_MMAP_THRESHOLD_ is left as it is."""
    run = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ, **env})
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("needs glibc")
    applied, grown = run.stdout.split()
    if env:
        assert applied == "False" and float(grown) > 90   # the heap took the 100 MB
    else:
        assert applied == "True" and float(grown) < 1


def test_grpo_on_answers_alone_plans_no_reward_model():
    """--no-process-reward: GRPO holds no PRM; PPO still does, its value model starts as it."""
    args = argparse.Namespace(model=None, policy=None, reward_model=None, preset="tiny",
                              unfreeze_embeddings=False, hard_threshold=None, easy_threshold=None,
                              dtype="auto", micro_batch_size=2, batch_size=4, max_len=64,
                              sample_batch_size=16, eval_batch_size=16, n_samples=None,
                              activation_checkpointing=False,
                              samples=None, eval_problems=0, test_problems=0, hparams="embedded")
    held = {}
    for algo, answers_only in (("grpo", False), ("grpo", True), ("ppo", True)):
        args.algo, args.no_process_reward = algo, answers_only
        st = memory_check.setup_for(args, torch.device("cpu"))
        held[algo, answers_only] = set(memory.roles(st)[0])
    assert held["grpo", False] == {"policy", "reference", "reward"}
    assert held["grpo", True] == {"policy", "reference"}
    assert held["ppo", True] == {"policy", "reference", "value"}
