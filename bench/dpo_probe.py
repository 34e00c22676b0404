"""What one DPO epoch does to a policy, pair by pair and token by token.

Reads the pairs a DPO run built (<run>/data/dpo_iteration0.jsonl: tokens, loss masks and the
reference log-probs of both sides), trains a copy of the starting policy on them for one epoch
in this process (constant learning rate, AdamW, the run's loss ``e2h.dpo.loss_fn``), then
measures:

- per pair, how the summed log-probs of the chosen and rejected sides moved, and on how many
  pairs the chosen side itself became less likely;
- per token, where the change sits: tokens the two sides share up to their first difference
  (their log-ratio cancels in the DPO margin, so only the NLL term or side effects move them)
  against the tokens from the first difference on;
- which tokens gained the probability the sides lost (summed over every completion position);
- greedy answers of validation problems before and after: how many flip each way.

    python bench/dpo_probe.py --policy runs/cache/sft-*/model --pairs runs/dpo/data/dpo_iteration0.jsonl \
        --lr 3e-4 --beta 0.1 [--rpo-alpha 1]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import synthetic  # noqa: E402
from data.format import tokenize_sft  # noqa: E402
from e2h import dpo  # noqa: E402
from e2h.hf.checkpoint import load_model  # noqa: E402
from e2h.sample import sample_solutions  # noqa: E402
from e2h.sft import freeze_embeddings  # noqa: E402
from e2h.tokenizer import Tokenizer  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="the starting policy (HF folder)")
    p.add_argument("--pairs", required=True, help="a DPO run's data/dpo_iteration0.jsonl")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--rpo-alpha", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup, then constant")
    p.add_argument("--validation", type=int, default=100, help="validation problems per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-pairs", action="store_true",
                   help="cut each pair to the step where its solutions part (e2h.dpo.step_pair)")
    p.add_argument("--clean-chosen", action="store_true",
                   help="keep only pairs whose chosen side passes the program checker at every "
                        "step (an upper bound on what an evaluator's filter can give)")
    return p.parse_args()


def texts(e, tok):
    """(prompt, {"chosen": text, "rejected": text}) of an encoded pair."""
    prompt = tok.decode([t for t, m in zip(e["chosen_tokens"][1:], e["chosen_mask"][1:]) if not m])
    side = {s: tok.decode([t for t, m in zip(e[f"{s}_tokens"], e[f"{s}_mask"]) if m and t != tok.eos_id])
            for s in ("chosen", "rejected")}
    return prompt, side


def chosen_is_clean(e, tok) -> bool:
    prompt, side = texts(e, tok)
    question = prompt[prompt.index("Start at"):prompt.index("prime.") + len("prime.")]
    start, menus = synthetic.parse_question(question)
    answer = f"{synthetic.walks(start, menus)[0][-1][2]:02d}"
    labels, outcome = synthetic.label_solution({"question": question, "answer": answer},
                                               side["chosen"])
    return outcome == 1 and len(labels) == synthetic.N_SLOTS and all(labels)


def as_step_pairs(examples, tok, reference):
    """The run's whole-solution pairs, cut to their first differing step and re-encoded, with
    the reference log-probs of the starting policy."""
    pairs = []
    for e in examples:
        prompt, side = texts(e, tok)
        pair = dpo.step_pair({"question": "", **side})
        c_tok, c_mask = tokenize_sft(tok, prompt + pair["prefix"], pair["chosen"], pair["eos"])
        r_tok, r_mask = tokenize_sft(tok, prompt + pair["prefix"], pair["rejected"], pair["eos"])
        pairs.append({"chosen_tokens": c_tok, "chosen_mask": c_mask,
                      "rejected_tokens": r_tok, "rejected_mask": r_mask})
    return dpo.cache_ref_logps(reference, pairs, tok.pad_id)


@torch.no_grad()
def token_logps(model, batch):
    """(2B, T-1) log-prob of each next token, and (2B, T-1, V) log-probs of every token."""
    logits = model(batch["tokens"][:, :-1]).float()
    logp_all = logits.log_softmax(-1)
    return logp_all.gather(-1, batch["tokens"][:, 1:, None])[..., 0], logp_all


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if len(diff) else n


def measure(before, after, examples, pad_id, tok):
    """Per-pair and per-token movement of the log-probs, and the tokens that gained mass."""
    rows, gained = [], Counter()
    for i in range(0, len(examples), 16):
        chunk = examples[i:i + 16]
        batch = dpo.collate_pairs(chunk, pad_id)
        lp0, all0 = token_logps(before, batch)
        lp1, all1 = token_logps(after, batch)
        mask = batch["loss_mask"][:, 1:].bool()
        moved = (all1.exp() - all0.exp()) * mask[..., None]       # (2B, T-1, V)
        for v, m in enumerate(moved.sum((0, 1)).tolist()):
            gained[v] += m
        B = len(chunk)
        for j, e in enumerate(chunk):
            c, r = torch.tensor(e["chosen_tokens"]), torch.tensor(e["rejected_tokens"])
            d = first_difference(c, r) - 1          # position in the shifted (T-1) rows
            for side, row in (("chosen", j), ("rejected", B + j)):
                m = mask[row]
                pos = torch.arange(m.numel())
                shared, own = m & (pos < d), m & (pos >= d)
                delta = lp1[row] - lp0[row]
                rows.append({"pair": i + j, "side": side, "total": float(delta[m].sum()),
                             "shared": float(delta[shared].sum()), "own": float(delta[own].sum()),
                             "n_shared": int(shared.sum()), "n_own": int(own.sum())})
    return rows, gained


def greedy_correct(model, tok, problems):
    samples = sample_solutions(model, tok, problems, n=1, temperature=0.0, top_k=None,
                               max_new_tokens=96, batch_size=64)
    return {s["id"]: bool(s["correct"]) for s in samples}, samples


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    tok = Tokenizer(Path(args.policy) / "tokenizer.json")
    before = load_model(args.policy).eval()
    after = copy.deepcopy(before).train()
    examples = [json.loads(line) for line in Path(args.pairs).read_text().splitlines()]
    if args.clean_chosen:
        examples = [e for e in examples if chosen_is_clean(e, tok)]
    if args.step_pairs:
        examples = as_step_pairs(examples, tok, before)
    freeze_embeddings(after)            # as train.py trains a pretrained policy
    params = [p for p in after.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    log = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(examples), generator=g).tolist()
        for i in range(0, len(order), args.batch_size):
            batch = dpo.collate_pairs([examples[k] for k in order[i:i + args.batch_size]], tok.pad_id)
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (len(log) + 1) / max(args.warmup_steps, 1))
            loss, metrics = dpo.loss_fn(after, batch, beta=args.beta, rpo_alpha=args.rpo_alpha)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            log.append({k: round(float(v), 4) for k, v in metrics.items()})
    after.eval()
    print(f"{len(examples)} pairs, {len(log)} steps at lr {args.lr}, beta {args.beta}, "
          f"rpo_alpha {args.rpo_alpha}")
    for k in ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected", "nll_loss"):
        print(f"  {k}: first step {log[0][k]}, last step {log[-1][k]}")

    rows, gained = measure(before, after, examples, tok.pad_id, tok)
    for side in ("chosen", "rejected"):
        r = [x for x in rows if x["side"] == side]
        n = len(r)
        print(f"{side}: mean change of the summed log-prob {sum(x['total'] for x in r) / n:+.3f} "
              f"(shared prefix {sum(x['shared'] for x in r) / n:+.3f} over "
              f"{sum(x['n_shared'] for x in r) / n:.1f} tokens, from the first difference on "
              f"{sum(x['own'] for x in r) / n:+.3f} over {sum(x['n_own'] for x in r) / n:.1f}); "
              f"{sum(x['total'] < 0 for x in r)} of {n} less likely")
    top = sorted(gained.items(), key=lambda kv: -kv[1])
    fmt = lambda kv: f"{tok.decode([kv[0]])!r} {kv[1]:+.1f}"  # noqa: E731
    print("probability gained, summed over completion positions: "
          + ", ".join(map(fmt, top[:6])) + " | lost: " + ", ".join(map(fmt, top[-6:])))

    problems = synthetic.make_split(args.validation, seed=args.seed, split="validation")
    was, _ = greedy_correct(before, tok, problems)
    now, samples = greedy_correct(after, tok, problems)
    up = sum(now[k] and not was[k] for k in was)
    down = sum(was[k] and not now[k] for k in was)
    print(f"greedy on {len(problems)} validation problems: {sum(was.values())} -> "
          f"{sum(now.values())} correct ({up} flipped to right, {down} to wrong)")
    for s in samples[:3]:
        print("  sample after:", repr(s["completion"][:90]))


if __name__ == "__main__":
    main()
