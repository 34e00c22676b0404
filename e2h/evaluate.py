"""Easy / Hard / All evaluation of a generator, alone or re-ranked by an evaluator
(PAPER.md, "Re-ranking"; the MATH500 tables).

1. Sample N solutions per problem once (top-k 20, T 0.7 in the paper). The N samples of a
   prompt share one prefill (``generate(..., n=N)``) and problems are batched.
2. Score every sample once with the reward model, in batches (``e2h.rm.score_completions``).
3. For each n in 1, 2, 4, ..., N draw random size-n subsets of each problem's samples and
   report accuracy of majority voting, weighted voting (prod scores) and best-of-n (min
   scores), as mean and standard deviation over the subsets; the same subsets serve every
   method. Greedy decoding is a separate pass. Easy = levels 1-3, Hard = 4-5, All = the mean
   over all problems (MATH500: (238 E + 262 H) / 500).

Outputs: ``samples.jsonl`` and ``greedy.jsonl`` (canonical sample records with their scores),
``table.json`` and ``table.md``; with ``--rm-records``, the reward model's step- and
outcome-level ROC-AUC on held-out RM records, Easy / Hard / All, in ``rm_auc.json``. Usage:

    python -m e2h.evaluate --policy DIR --rm DIR --data FILE --tokenizer PATH --n 16 --out DIR
    python -m e2h.evaluate --rm DIR --rm-records FILE --tokenizer PATH --out DIR

Letters: N samples per problem.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from data.format import format_prompt
from e2h.grader import extract_answer, grade_answer
from e2h.rerank import best_index, group_answers, vote
from e2h.rm import (aggregate, encode_completion, roc_auc, score_completions,
                    step_and_outcome_auc)
from e2h.sample import generate

SPLITS = ("easy", "hard", "all")
METHODS = {"majority": None, "weighted": "prod", "best_of_n": "min"}   # method -> aggregation


def difficulty_of(level) -> str | None:
    return "easy" if level in (1, 2, 3) else "hard" if level in (4, 5) else None


@torch.no_grad()
def sample_solutions(policy, tok, problems: list[dict], n: int, temperature: float = 0.7,
                     top_k: int | None = 20, max_new_tokens: int = 512, generator=None,
                     batch_size: int = 8, prompt_fn=format_prompt, answer_fn=extract_answer,
                     stop_fn=None) -> list[dict]:
    """n sample records per problem (problem-major), graded against ``answer`` when present.

    ``batch_size`` problems go to ``generate`` at once, i.e. batch_size * n rows decoding
    together after batch_size prefills. Sampling stops at EOS, which is not part of the text.
    ``prompt_fn`` / ``answer_fn`` / ``stop_fn`` (see ``generate``) switch the format: the
    few-shot baseline uses its own.
    """
    samples = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        prompts = [tok.encode(prompt_fn(p["question"]), bos=True) for p in chunk]
        outs = generate(policy, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                        n=n, eos_id=tok.eos_id, stop_fn=stop_fn, generator=generator)
        for j, out in enumerate(outs):
            p = chunk[j // n]
            ids = list(out.tokens)
            if tok.eos_id in ids:
                ids = ids[:ids.index(tok.eos_id)]
            completion = tok.decode(ids)
            answer = answer_fn(completion)
            correct = None if p.get("answer") is None else grade_answer(answer, p["answer"])
            samples.append({"id": p["id"], "question": p["question"], "completion": completion,
                            "answer": answer, "correct": correct, "level": p.get("level"),
                            "step_scores": [], "outcome_score": None})
    return samples


def score_samples(rm, tok, samples: list[dict], batch_size: int = 16) -> list[dict]:
    """Fill in ``step_scores`` / ``outcome_score`` of every sample (in place), one RM pass.

    Samples are re-tokenized from their text, prompt and completion together, exactly as the
    reward model's training examples were; the saved jsonl alone is enough to re-score a run.
    """
    encoded = [encode_completion(tok, s["question"], s["completion"]) for s in samples]
    prompts, completions = [e[0] for e in encoded], [e[1] for e in encoded]
    scores = score_completions(rm, tok, prompts, completions, batch_size)
    for s, sc in zip(samples, scores):
        s.update(sc)
    return samples


def accuracy_by_split(samples: list[dict]) -> dict:
    """Accuracy (%) of one graded sample per problem, per split (ungraded samples left out)."""
    hits = {k: [] for k in SPLITS}
    for s in samples:
        if s["correct"] is not None:
            for k in (difficulty_of(s["level"]), "all"):
                if k is not None:
                    hits[k].append(float(s["correct"]))
    return {k: 100 * float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def _problem_arrays(samples: list[dict], methods) -> list[dict]:
    by_id: dict[str, list[dict]] = {}
    for s in samples:
        by_id.setdefault(s["id"], []).append(s)
    problems = []
    for group in by_id.values():
        if any(s["correct"] is None for s in group):
            continue                                    # no reference answer: nothing to score
        weights = {m: np.array([1.0 if how is None else _score(s, how) for s in group])
                   for m, how in methods.items()}                                  # (N,) each
        problems.append({"split": difficulty_of(group[0]["level"]),
                         "correct": np.array([bool(s["correct"]) for s in group]),   # (N,)
                         "groups": group_answers([s["answer"] for s in group]),      # (N,)
                         "weights": weights})
    return problems


def _score(sample: dict, how: str) -> float:
    return aggregate(sample["step_scores"], sample["outcome_score"], how)


def _choose(method: str, groups, weights):
    return best_index(groups, weights) if method == "best_of_n" else vote(groups, weights)


def rerank_table(samples: list[dict], ns=None, n_subsets: int = 32, seed: int = 0,
                 greedy: list[dict] | None = None, with_rm: bool | None = None) -> dict:
    """Accuracy (%) at each n in ``ns`` for each re-ranking method, mean and std over subsets.

    For every n, ``n_subsets`` draws (one when n equals every problem's sample count) each
    pick, per problem, n of its samples uniformly without replacement (kept in sample order,
    so ties go to the earlier sample). A draw's accuracy per split is the mean over problems;
    the table reports the mean and (population) std of that over draws. A problem's answers
    are grouped once, over all its samples, and every subset votes with those groups; a chosen
    group is right when its first member in the subset is. Methods needing scores
    run when ``with_rm`` (default: some sample has scores). Problems without a reference answer
    are skipped.
    """
    if with_rm is None:
        with_rm = any(s.get("step_scores") or s.get("outcome_score") is not None for s in samples)
    methods = {m: how for m, how in METHODS.items() if with_rm or how is None}
    problems = _problem_arrays(samples, methods)
    if not problems:
        raise ValueError("rerank_table: no graded samples")
    sizes = {len(p["correct"]) for p in problems}
    ns = list(ns) if ns is not None else [2 ** i for i in range(min(sizes).bit_length())]
    if max(ns) > min(sizes):
        raise ValueError(f"rerank_table: n={max(ns)} but a problem has only {min(sizes)} samples")
    rng = np.random.default_rng(seed)
    table = {m: {} for m in methods}
    for n in ns:
        draws = 1 if sizes == {n} else n_subsets
        acc = {m: {k: [] for k in SPLITS} for m in methods}                   # per draw
        for _ in range(draws):
            hits = {m: {k: [] for k in SPLITS} for m in methods}
            for p in problems:
                idx = np.sort(rng.choice(len(p["correct"]), size=n, replace=False))   # (n,)
                for m in methods:
                    i = _choose(m, p["groups"][idx], p["weights"][m][idx])
                    hit = float(i is not None and p["correct"][idx][i])
                    for k in (p["split"], "all"):
                        if k is not None:
                            hits[m][k].append(hit)
            for m in methods:
                for k in SPLITS:
                    acc[m][k].append(100 * np.mean(hits[m][k]) if hits[m][k] else float("nan"))
        for m in methods:
            table[m][str(n)] = {k: [float(np.mean(v)), float(np.std(v))] for k, v in acc[m].items()}
    counts = {k: sum(p["split"] == k for p in problems) for k in ("easy", "hard")}
    return {"n_problems": {**counts, "all": len(problems)}, "ns": ns, "n_subsets": n_subsets,
            "seed": seed, "greedy": accuracy_by_split(greedy) if greedy else None,
            "methods": table, "auc": _outcome_aucs(samples) if with_rm else None}


def _outcome_aucs(samples: list[dict]) -> dict:
    """ROC-AUC (answer correct vs not) of each aggregated score, per split."""
    out = {}
    for how in ("min", "prod", "mean", "last"):
        pairs = [(difficulty_of(s["level"]), _score(s, how), s["correct"])
                 for s in samples if s["correct"] is not None]
        out[how] = {k: roc_auc([x for sp, x, _ in pairs if k in (sp, "all")],
                               [y for sp, _, y in pairs if k in (sp, "all")]) for k in SPLITS}
    return out


def format_table(table: dict) -> str:
    """Markdown: the paper's Easy / Hard / All table at the largest n, then the All curve over n."""
    names = {"majority": "majority voting", "weighted": "weighted voting (prod)",
             "best_of_n": "best-of-n (min)"}
    top = str(table["ns"][-1])
    c = table["n_problems"]
    lines = [f"Accuracy (%) on {c['all']} problems ({c['easy']} easy, {c['hard']} hard); "
             f"re-ranking at N = {top}, mean ± std over random subsets.", "",
             "| method | Easy | Hard | All |", "|---|---|---|---|"]
    if table["greedy"]:
        lines.append("| greedy | " + " | ".join(f"{table['greedy'][k]:.1f}" for k in SPLITS) + " |")
    for m, by_n in table["methods"].items():
        cells = [f"{by_n[top][k][0]:.1f} ± {by_n[top][k][1]:.1f}" for k in SPLITS]
        lines.append(f"| {names[m]} | " + " | ".join(cells) + " |")
    lines += ["", "All (%) by N:", "", "| method | " + " | ".join(map(str, table["ns"])) + " |",
              "|---" * (len(table["ns"]) + 1) + "|"]
    for m, by_n in table["methods"].items():
        cells = [f"{by_n[str(n)]['all'][0]:.1f}" for n in table["ns"]]
        lines.append(f"| {names[m]} | " + " | ".join(cells) + " |")
    if table["auc"]:
        aucs = [f"{how} " + " / ".join(f"{v:.3f}" for v in by_split.values())
                for how, by_split in table["auc"].items()]
        lines += ["", "Outcome ROC-AUC of the aggregated score (Easy / Hard / All): "
                  + ", ".join(aucs)]
    return "\n".join(lines) + "\n"


def read_problems(path) -> list[dict]:
    """Problem records from jsonl (canonical, or MATH's ``problem`` / ``unique_id`` fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: problem file not found")
    problems = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        r.setdefault("id", r.get("unique_id"))
        r.setdefault("question", r.get("problem"))
        missing = [k for k in ("id", "question", "answer") if r.get(k) is None]
        missing += ["level"] * ("level" not in r)
        if missing:
            raise ValueError(f"{path}:{line_no}: missing key {missing[0]!r}")
        problems.append(r)
    return problems


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # models and data
    parser.add_argument("--policy", default=None, help="generator checkpoint directory")
    parser.add_argument("--rm", default=None,
                        help="reward model checkpoint directory (omit: greedy and majority only)")
    parser.add_argument("--data", default=None,
                        help="problems jsonl (canonical records, or MATH500 as shipped)")
    parser.add_argument("--rm-records", default=None,
                        help="held-out RM records jsonl: report the RM's step / outcome ROC-AUC")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json (or its directory)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT problems")
    # sampling
    parser.add_argument("--n", type=int, default=16, help="samples per problem (N)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=20, help="top-k sampling (0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest completion")
    parser.add_argument("--batch-size", type=int, default=8, help="problems per generate call")
    parser.add_argument("--rm-batch-size", type=int, default=16, help="sequences per RM forward")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy pass")
    # re-ranking
    parser.add_argument("--n-subsets", type=int, default=32, help="random subsets per n")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and subsets")
    # run
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="model dtype")
    args = parser.parse_args(argv)
    if args.policy is None and args.rm_records is None:
        parser.error("nothing to do: give --policy and --data, and/or --rm and --rm-records")
    if args.policy is not None and args.data is None:
        parser.error("--policy needs --data")
    if args.rm_records is not None and args.rm is None:
        parser.error("--rm-records needs --rm")
    return args


def rm_auc_by_difficulty(rm, tok, records: list[dict], batch_size: int) -> dict:
    """``step_and_outcome_auc`` on the easy, hard and all held-out records."""
    return {k: step_and_outcome_auc(rm, tok, [r for r in records
                                              if k == "all" or difficulty_of(r.get("level")) == k],
                                    batch_size) for k in SPLITS}


def main(argv=None):
    args = parse_args(argv)
    print(json.dumps(vars(args)))
    from e2h.checkpoint import load_model
    from e2h.tokenizer import Tokenizer
    tok = Tokenizer(args.tokenizer)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = greedy = None
    if args.policy:                                   # 1. sample (the policy, then the RM, in memory)
        problems = read_problems(args.data)[:args.limit]
        policy = load_model(args.policy, dtype=dtype, device=args.device).eval()
        if not args.no_greedy:
            greedy = sample_solutions(policy, tok, problems, n=1, temperature=0.0, top_k=None,
                                      max_new_tokens=args.max_new_tokens,
                                      batch_size=args.batch_size * args.n)   # rows as sampling
            write_jsonl(out / "greedy.jsonl", greedy)
        samples = sample_solutions(policy, tok, problems, n=args.n, temperature=args.temperature,
                                   top_k=args.top_k or None, max_new_tokens=args.max_new_tokens,
                                   generator=torch.Generator(args.device).manual_seed(args.seed),
                                   batch_size=args.batch_size)
        del policy
    if args.rm:                                       # 2. score once; held-out ROC-AUC
        rm = load_model(args.rm, dtype=dtype, device=args.device).eval()
        if samples is not None:
            score_samples(rm, tok, samples, args.rm_batch_size)
        if args.rm_records:
            records = [json.loads(line) for line in Path(args.rm_records).read_text().splitlines()
                       if line.strip()]
            auc = rm_auc_by_difficulty(rm, tok, records, args.rm_batch_size)
            (out / "rm_auc.json").write_text(json.dumps(auc, indent=1) + "\n")
            print("held-out RM ROC-AUC:", json.dumps(auc))
        del rm
    if samples is not None:                           # 3. re-rank
        write_jsonl(out / "samples.jsonl", samples)
        table = rerank_table(samples, n_subsets=args.n_subsets, seed=args.seed, greedy=greedy,
                             with_rm=bool(args.rm))
        table["args"] = vars(args)
        (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "table.md").write_text(format_table(table))
        print(format_table(table))


if __name__ == "__main__":
    main()
