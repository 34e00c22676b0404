"""A memory plan: the bytes each rank holds during a run, known before it starts, so a model,
algorithm and GPU count that cannot fit are refused up front (docs/scale.md: the paper's runs;
train.py's check of its own run against its device is e2h/memory_check.py).

    python -m e2h.memory --preset llemma-7b --algo ppo --world 8 --dtype bfloat16

What is counted follows what e2h does:
- state, sharded over W ranks by FSDP2: fp32 master weights (4 bytes a parameter) of every
  model, AdamW's two fp32 moments (8) of the trained parameters, fp32 gradients (4) while a step
  runs. A pretrained model trains with embeddings, norms and LM head frozen (the paper;
  sft.freeze_embeddings); a reward model built on a policy keeps its unused LM head, frozen.
- activations of one micro-batch (rows x --max-len tokens): e2h/infra/footprint.py, what autograd
  saves counted op by op, plus the backward's largest temporaries.
- FSDP2's working set: the root's parameters (embeddings, final norm, head) stay gathered from
  forward to backward; one block gathered, the next prefetched, its gradients reduced in fp32.
  One process instead autocasts, holding a compute-dtype copy of every Linear weight.
- sampling: ``distributed.gathered`` unshards each sampling model whole on every rank, in the
  compute dtype; the KV cache holds 2 x layers x rows x kv heads x head dim x slots; a scoring
  forward over the vocabulary holds about four fp32 copies of its logits.
- export: rank 0 gathers one tensor at a time (e2h/hf/sharded.py); runtime: what a process holds
  before any model (CUDA context: an assumed 0.75 GiB; CPU: the process's resident memory).
Peak = state + runtime + the largest phase (train, sample, export). Worst case: every sequence
--max-len long, gradients alive with the activations (gradient accumulation; with one
micro-batch a step the plan is high by up to the gradients). Not counted: allocator
fragmentation and reserve, communication buffers, the prefill's transients.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from e2h.infra.host import resident_bytes
from e2h.defaults import COMMON, PAPER
from e2h.infra.footprint import Model, activation_peak, kv_cache
from e2h.model import ModelArgs

GiB = 2**30
CAPACITY = {"80 GB": 81559 * 2**20, "141 GB": 143771 * 2**20}   # H100 / H200 as CUDA reports them
CUDA_RUNTIME = int(0.75 * GiB)   # context and kernels per GPU: an assumption, not a measurement
SCORING_COPIES = 4               # fp32 logits copies of a no-grad forward over the vocabulary


@dataclass
class Setup:
    """One run as the plan sees it. ``sample_rows``: prompts per generate call, ``n_samples``
    each; ``eval_rows``: prompts per greedy validation / test call; ``fsdp``: under torchrun
    (else one process, autocast); ``samples_policy``: orm / prm / oprm sample the policy for
    their data; ``evaluates``: sft samples for its closing accuracy."""
    algo: str
    policy: Model
    evaluator: Model | None = None
    world: int = 1
    fsdp: bool = False
    compute_bytes: int = 2
    micro_batch: int = 1
    seq_len: int = 1024
    sample_rows: int = 16
    n_samples: int = 1
    eval_rows: int = 0
    activation_checkpointing: bool = False
    cpu: bool = False
    runtime: int = CUDA_RUNTIME
    samples_policy: bool = True
    process_reward: bool = True
    evaluates: bool = False


def roles(st: Setup) -> tuple[dict[str, Model], list[str], dict[str, Model]]:
    """Models resident while training, those trained in an update, and those resident while
    sampling (all of them gathered, except PPO's scorers)."""
    p, e = st.policy, st.evaluator
    if st.algo == "sft":
        return {"policy": p}, ["policy"], {"policy": p} if st.evaluates else {}
    if st.algo in ("orm", "prm", "oprm"):   # the policy samples, is freed; then the RM trains
        frozen = {"policy": replace(p, trained=False)} if st.samples_policy else {}
        return {"reward model": replace(p, head="score")}, ["reward model"], frozen
    if st.algo == "ppo":
        models = {"policy": p, "reference": replace(p, trained=False),
                  "value": replace(e, trained=True)}
        if st.process_reward:
            models["reward"] = replace(e, trained=False)
        return models, ["policy", "value"], models
    if st.algo == "grpo":   # no value model: the group is the baseline
        models = {"policy": p, "reference": replace(p, trained=False)}
        if st.process_reward:
            models["reward"] = replace(e, trained=False)
        return models, ["policy"], models
    models = {"policy": p} | ({"evaluator": replace(e, trained=False)} if e else {})
    return models, ["policy"], models   # dpo, rest


def _state(models: dict[str, Model], W: int) -> int:
    """fp32 masters of every model and AdamW moments of the trained parameters, per rank."""
    return sum((4 * m.counts()["total"] + 8 * m.counts()["trained"]) // W for m in models.values())


def plan(st: Setup) -> dict:
    """{"rows": [(label, bytes per rank)], "phases": {phase: peak bytes}, "peak", "phase",
    "state"} where a phase's peak is its resident state + runtime + its transients."""
    if st.algo == "rerank":
        return _rerank(st)
    W = st.world if st.fsdp else 1
    s, sp = st.compute_bytes, st.compute_bytes if st.fsdp else 4   # compute, gathered bytes
    models, trained, samplers = roles(st)
    rows, grads, working = [], 0, 0
    split = f", 1/{W}" if W > 1 else ""
    for name, m in models.items():
        c = m.counts()
        rows.append((f"{name}{'' if m.trained else ' (frozen)'}: parameters (fp32{split})",
                     4 * c["total"] // W))
        if m.trained:
            rows += [(f"{name}: gradients (fp32{split})", 4 * c["trained"] // W),
                     (f"{name}: AdamW state (fp32{split})", 8 * c["trained"] // W)]
            grads += 4 * c["trained"] // W
    update_rows = 2 * st.micro_batch if st.algo == "dpo" else st.micro_batch   # DPO: pairs
    acts = {ac: sum(activation_peak(models[n], update_rows, st.seq_len, s, ac, st.cpu)
                    for n in trained) for ac in (False, True)}
    for n in trained:
        c = models[n].counts()
        working += c["root"] * sp if st.fsdp else (c["linear"] * s if s < 4 else 0)
    if st.fsdp:
        working += max(models[n].counts()["block"] for n in trained) * (3 * sp + 4)
    tokens = f"{update_rows} x {st.seq_len} tokens"
    rows += [(f"activations, {tokens}, no checkpointing", acts[False]),
             (f"activations, {tokens}, checkpointing", acts[True]),
             ("FSDP2 working set" if st.fsdp else "autocast weight copies", working)]
    state = _state(models, W)
    phases = {"train": state + grads + acts[st.activation_checkpointing] + working}
    if samplers:
        phases["sample"] = _sample_state(st, samplers, rows, W, sp)
    largest = max(max(m.args.vocab_size, m.args.ffn_dim) * m.args.dim for m in models.values())
    phases["export"] = state + 4 * largest   # rank 0: one gathered fp32 tensor
    rows.append(("runtime", st.runtime))
    phases = {k: v + st.runtime for k, v in phases.items()}
    phase = max(phases, key=phases.get)
    return {"rows": rows, "phases": phases, "state": state, "phase": phase,
            "peak": phases[phase]}


def _sample_state(st: Setup, samplers: dict[str, Model], rows: list, W: int, sp: int) -> int:
    """Bytes of the sampling phase (rows appended to ``rows``): samplers' state, the models
    gathered (PPO: the policy alone), the KV cache and decode logits, scoring forwards."""
    gathered = ["policy"] if st.algo in ("ppo", "grpo") else list(samplers)
    full = sum(samplers[n].counts()["total"] * sp for n in gathered) if st.fsdp else 0
    # ppo, grpo: --sample-batch-size rows in all, however many samples a prompt has
    b, n = st.sample_rows, 1 if st.algo in ("ppo", "sft", "grpo") else st.n_samples
    # repeat_interleave(n) builds the n-fold cache while the prompts' one still exists;
    # greedy validation decodes eval_rows rows
    kv_rows = max(b * n + (b if n > 1 else 0), st.eval_rows)
    cache = kv_cache(st.policy.args, kv_rows, st.seq_len, sp)
    decode = SCORING_COPIES * 4 * st.policy.args.vocab_size * max(b * n, st.eval_rows)
    score_rows = {"ppo": b, "grpo": b, "dpo": 2 * b}.get(st.algo, 0)   # reference log-probs of whole rows
    scoring = SCORING_COPIES * 4 * st.policy.args.vocab_size * score_rows * st.seq_len
    rows += [("sampling: gathered " + " + ".join(gathered) + f" ({'bf16' if sp == 2 else 'fp32'})",
              full),
             (f"sampling: KV cache, {max(b * n, st.eval_rows)} rows x {st.seq_len} slots", cache),
             ("sampling: logits of decoding / of scoring forwards", max(decode, scoring))]
    if st.algo in ("ppo", "grpo"):   # scoring runs after the policy is sharded again
        return _state(samplers, W) + max(full + cache + decode, scoring)
    return _state(samplers, W) + full + max(cache + decode, scoring)


def _rerank(st: Setup) -> dict:
    """evaluate.py: one process per GPU, weights in the compute dtype, no optimizer; the policy
    samples, is freed, then the evaluator scores."""
    s, b, n = st.compute_bytes, st.sample_rows, st.n_samples
    policy = st.policy.counts()["total"] * s
    cache = kv_cache(st.policy.args, b * n + (b if n > 1 else 0), st.seq_len, s)
    decode = SCORING_COPIES * 4 * st.policy.args.vocab_size * b * n
    score = (st.evaluator or st.policy).counts()["total"] * s
    rows = [("policy weights", policy), (f"KV cache, {b * n} rows x {st.seq_len} slots", cache),
            ("decode logits", decode), ("evaluator weights", score), ("runtime", st.runtime)]
    phases = {"sample": policy + cache + decode + st.runtime, "score": score + st.runtime}
    phase = max(phases, key=phases.get)
    return {"rows": rows, "phases": phases, "state": 0, "phase": phase, "peak": phases[phase]}


def summary(result: dict, capacity: int, where: str) -> tuple[str, bool]:
    """The one-line verdict against ``capacity`` bytes of ``where``: (line, fits)."""
    fits = result["peak"] <= capacity
    phases = ", ".join(f"{k} {v / GiB:.1f}" for k, v in result["phases"].items())
    line = (f"memory plan: {result['peak'] / GiB:.1f} GiB per rank at peak ({phases} GiB); "
            f"{where} has {capacity / GiB:.1f} GiB: "
            + ("fits" if fits else "does not fit; try --activation-checkpointing, a smaller "
               "--micro-batch-size or --sample-batch-size, or more ranks (python -m e2h.memory "
               "shows every term)"))
    return line, fits


def format_plan(st: Setup) -> str:
    """The CLI's table: every term, then the peaks and the verdicts for 80 GB and 141 GB GPUs."""
    dtype = "bfloat16" if st.compute_bytes == 2 else "float32"
    lines = [f"{st.algo}, {st.world} rank(s), {dtype}; bytes per rank:"]
    lines += [f"  {label:<62} {n / GiB:8.2f} GiB" for label, n in plan(st)["rows"]]
    for ac in (False,) if st.algo == "rerank" else (False, True):
        r = plan(replace(st, activation_checkpointing=ac))
        verdicts = ", ".join(f"{name} {'fits' if r['peak'] <= cap else 'does not fit'}"
                             for name, cap in CAPACITY.items())
        name = "peak" + ("" if st.algo == "rerank" else
                         " with checkpointing" if ac else " without checkpointing")
        lines.append(f"  {name + ' (' + r['phase'] + ')':<62} {r['peak'] / GiB:8.2f} GiB: {verdicts}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Per-GPU memory of an e2h run (the paper's settings, "
                                "docs/paper.md).")
    p.add_argument("--algo", required=True, choices=(*PAPER, "rerank"))
    p.add_argument("--preset", default="llemma-7b", help="policy shape (e2h.model.PRESETS)")
    p.add_argument("--evaluator", default=None, help="reward / value model shape (default: --preset)")
    p.add_argument("--world", type=int, default=8, help="ranks (GPUs), FSDP2 over all of them")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--micro-batch-size", type=int, default=None, help="rows per rank and forward "
                   "(default: the paper's batch / --world, as train.py; DPO: pairs)")
    p.add_argument("--max-len", type=int, default=None, help="tokens per row (default: the paper's)")
    p.add_argument("--sample-batch-size", type=int, default=None, help="prompts per generate "
                   "call (default: train.py's 16; rerank: evaluate.py's --sample-batch-size 8)")
    p.add_argument("--n-samples", type=int, default=None, help="samples per prompt (default: the "
                   "paper's; rerank 16)")
    p.add_argument("--unfreeze-embeddings", action="store_true")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: the plan of a "
                   "CPU run (float32 masters, PyTorch attention), runtime = this process")
    a = p.parse_args(argv)
    # rerank: the ORM's 1024 tokens, evaluate.py's --n 16
    hp = {**COMMON["paper"], **PAPER.get(a.algo, {**PAPER["orm"], "n_samples": 16})}
    frozen = not a.unfreeze_embeddings
    policy = Model(ModelArgs.from_name(a.preset), frozen_embeddings=frozen)
    evaluator = Model(ModelArgs.from_name(a.evaluator or a.preset), head="score", trained=False,
                      lm_head=False, frozen_embeddings=frozen)
    st = Setup(a.algo, policy, evaluator if a.algo in ("dpo", "ppo", "grpo", "rerank") else None,
               world=a.world, fsdp=a.algo != "rerank", compute_bytes=2 if a.dtype == "bfloat16" else 4,
               micro_batch=a.micro_batch_size or max(1, hp["batch_size"] // a.world),
               seq_len=a.max_len or hp["max_len"],
               sample_rows=a.sample_batch_size or (8 if a.algo == "rerank" else 16),
               n_samples=a.n_samples or hp.get("n_samples", 1), eval_rows=hp["eval_batch_size"],
               cpu=a.device == "cpu", runtime=CUDA_RUNTIME if a.device == "cuda" else resident_bytes(),
               samples_policy=a.algo in ("orm", "oprm"))   # the paper's PRM: rated PRM800K steps
    print(format_plan(st))


if __name__ == "__main__":
    main()
