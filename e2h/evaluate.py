"""The evaluation command: Easy / Hard / All tables of a generator, alone or re-ranked by
evaluators (docs/paper.md, "Re-ranking"; the MATH500 tables). The pipeline's three steps are
e2h/sample.py, e2h/score.py and e2h/rerank.py; this file only wires them to files.

1. Sample N solutions per problem once (top-k 20, T 0.7 in the paper); greedy is a separate pass.
2. Score every sample once with the reward model.
3. Re-rank: accuracy at n = 1, 2, 4, ..., N of majority voting, weighted voting (prod) and
   best-of-n (min), mean and std over random subsets (``e2h.rerank.rerank_table``).

Outputs: ``samples.jsonl`` and ``greedy.jsonl`` (canonical sample records with their scores),
``table.json`` and ``table.md``; with ``--rm-records``, the reward model's step- and
outcome-level ROC-AUC on held-out RM records, Easy / Hard / All, in ``rm_auc.json``.

``--samples`` re-scores saved samples instead of sampling: each ``--rm NAME=DIR`` scores the
same samples and re-ranks them with the same subsets, and ``--confidence DIR`` adds the
generator's own smallest token probability as a baseline score; ``rerank.json`` holds every
table with the held-out and within-problem ROC-AUCs, ``scored_samples.jsonl.gz`` every score.
Under ``torchrun`` the problems (with ``--samples``, the samples) are spread over the ranks,
rank r taking problems r, r + W, ...; each rank samples and scores its share, the records are
gathered back in problem order, and every sample keeps the seed it has in one process, so the
files are the ones one process writes. The held-out ROC-AUC is computed by every rank; rank 0
writes the files.
Usage (the tokenizer is the tokenizer.json in the model folders unless --tokenizer says otherwise):

    python -m e2h.evaluate --policy DIR --rm DIR --data FILE --n-samples 16 --out DIR
    python -m e2h.evaluate --rm DIR --rm-records FILE --out DIR
    python -m e2h.evaluate --samples FILE --rm prm=DIR orm=DIR --confidence DIR \\
        --rm-records FILE --out DIR
    torchrun --nproc_per_node 8 -m e2h.evaluate --policy DIR --rm DIR --data FILE \\
        --n-samples 16 ...

Letters: N samples per problem.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
from pathlib import Path

import torch

from data import synthetic
from data.readers import numbered_rows, read_jsonl, write_jsonl
from e2h.infra import distributed as dist
from e2h.infra import folderlock
from e2h.hf.checkpoint import check_tokenizer, load_model
from e2h.infra.errors import guard
from e2h.infra.files import write_text
from e2h.flags import ShowDefaults
from e2h.rerank import format_table, rerank_table
from e2h.rm import prm_examples
from e2h.run import check_model_dir
from e2h.sample import pair_seeds, sample_solutions
from e2h.score import (auc_by_difficulty, min_token_probs, sample_score, score_samples,
                       within_problem_auc)
from e2h.tokenizer import Tokenizer


def read_problems(path) -> list[dict]:
    """Problem records from jsonl (canonical, or MATH's ``problem`` / ``unique_id`` fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: problem file not found")
    problems = []
    for line_no, r in numbered_rows(path):
        r.setdefault("id", r.get("unique_id"))
        r.setdefault("question", r.get("problem"))
        missing = [k for k in ("id", "question", "answer") if r.get(k) is None]
        missing += ["level"] * ("level" not in r)
        if missing:
            raise ValueError(f"{path}:{line_no}: missing key {missing[0]!r}")
        problems.append(r)
    if not problems:
        raise ValueError(f"{path}: no problems in the file")
    return problems


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    first_paragraph = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="python -m e2h.evaluate", description=first_paragraph,
                                     formatter_class=ShowDefaults)
    add = parser.add_argument
    # models and data
    add("--policy", default=None, help="generator checkpoint directory (default: none, nothing "
        "is sampled)")
    add("--rm", nargs="+", default=None, metavar="[NAME=]DIR",
        help="reward model checkpoint directory; with --samples, one or more NAME=DIR (default: "
             "none, greedy and majority voting only)")
    add("--data", default=None, help="problems jsonl (canonical records, or MATH500 as shipped); "
        "needed with --policy (default: none)")
    add("--rm-records", default=None, help="held-out RM records jsonl: report the RM's step / "
        "outcome ROC-AUC (default: none)")
    add("--samples", default=None, help="re-score these saved sample records (a samples.jsonl) "
        "instead of sampling (default: none, sample from --policy)")
    add("--confidence", default=None, help="with --samples: the generator whose smallest token "
        "probability is scored as a baseline (default: none)")
    add("--synthetic-problems", default=None, help="with --samples: the synthetic problems; the "
        "first 4 samples of each, labelled by the program checker, are the held-out RM records "
        "(default: none)")
    add("--tokenizer", default=None, help="tokenizer.json or its directory (default: the "
        "tokenizer.json in the --policy folder, else in the first --rm or the --confidence folder)")
    add("--out", required=True, help="output directory")
    add("--limit", type=positive, default=None, help="only the first LIMIT problems (default: all)")
    # sampling
    # --n-samples as in train.py; torchrun refuses --n as a prefix of its own --nnodes,
    # --nproc-per-node, ..., so --n serves plain python only
    add("--n-samples", "--n", dest="n", type=positive, default=16, help="samples per problem "
        "(N); under torchrun spell it --n-samples")
    add("--temperature", type=float, default=0.7, help="sampling temperature")
    add("--top-k", type=int, default=20, help="top-k sampling (0: off)")
    add("--max-new-tokens", type=positive, default=512, help="longest completion")
    add("--sample-batch-size", type=positive, default=8, help="problems per generate call (N "
        "samples each; the greedy pass takes N times as many)")
    add("--rm-batch-size", type=positive, default=16, help="sequences per RM forward")
    add("--no-greedy", action="store_true", help="skip the greedy pass")
    # re-ranking
    add("--n-subsets", type=positive, default=32, help="random subsets per n")
    add("--seed", type=int, default=0, help="seed for sampling and subsets")
    # run
    add("--device", default=None, help="torch device (default: cuda when available, else cpu; under "
        "torchrun each rank's own GPU)")
    add("--dtype", default=None, choices=["float32", "bfloat16"], help="model dtype (default: "
        "the dtype the checkpoint is stored in)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.samples is not None:
        if not args.rm or not all("=" in x for x in args.rm):
            parser.error("--samples needs --rm NAME=DIR [NAME=DIR ...]")
    else:
        if args.rm is not None and len(args.rm) > 1:
            parser.error("several --rm need --samples")
        args.rm = args.rm[0] if args.rm else None
        if args.policy is None and args.rm_records is None:
            parser.error("nothing to do: give --policy and --data, and/or --rm and --rm-records")
        if args.policy is not None and args.data is None:
            parser.error("--policy needs --data")
        if args.rm_records is not None and args.rm is None:
            parser.error("--rm-records needs --rm")
    return args


def default_tokenizer(args) -> str:
    """The tokenizer.json saved beside the models (train.py writes one into every model/)."""
    rms = [x.split("=", 1)[-1] for x in args.rm] if isinstance(args.rm, list) else [args.rm]
    folders = [f for f in (args.policy, *rms, args.confidence) if f]
    for folder in folders:
        if (Path(folder) / "tokenizer.json").is_file():
            return str(Path(folder) / "tokenizer.json")
    raise ValueError("--tokenizer not given and no tokenizer.json in "
                     + (", ".join(folders) or "a model folder") + ": give --tokenizer")


def check_models(args):
    """Each model flag names a model directory of the kind it takes (before any is loaded)."""
    rms = [x.split("=", 1)[-1] for x in args.rm] if isinstance(args.rm, list) else [args.rm]
    for flag, path, reward in [("policy", args.policy, False), ("confidence", args.confidence, False),
                               *[("rm", p, True) for p in rms]]:
        if path:
            check_model_dir(flag, path, reward)


def load(path, tok, dtype, device):
    model = load_model(path, dtype=dtype, device=device).eval()
    check_tokenizer(tok, model)
    return model


def main(argv=None):
    args = parse_args(argv)
    check_models(args)
    args.tokenizer = args.tokenizer or default_tokenizer(args)
    dist.say(json.dumps(vars(args)))
    args.device = dist.init() if dist.world_size() > 1 else torch.device(args.device)
    # one evaluation per folder, claimed by rank 0 before it writes (a refusal there ends them all)
    lock = folderlock.held(args.out) if dist.is_main() else contextlib.nullcontext()
    try:
        with lock:
            return rescore(args) if args.samples else sample_and_rerank(args)
    except folderlock.Held as e:
        raise ValueError(f"--out {e}; wait for it to end, or choose another --out") from None


def sample_and_rerank(args):
    """Steps 1-3 of the module docstring, from a policy and / or a reward model."""
    tok = Tokenizer(args.tokenizer)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = Path(args.out)
    if dist.is_main():
        (out / "table.json").unlink(missing_ok=True)   # the done-marker goes until this run writes it
    samples = greedy = None
    if args.policy:                                   # 1. sample (the policy, then the RM, in memory)
        problems = read_problems(args.data)[:args.limit]
        share = dist.shard_of(list(range(len(problems))))   # this rank's problem indices
        mine = [problems[i] for i in share]
        # every sample's seed as in one process: the ranks draw them all and take their own
        seeds = pair_seeds(len(problems) * args.n,
                           torch.Generator(args.device).manual_seed(args.seed))
        policy = load(args.policy, tok, dtype, args.device)
        if not args.no_greedy:
            greedy = sample_solutions(policy, tok, mine, n=1, temperature=0.0, top_k=None,
                                      max_new_tokens=args.max_new_tokens,
                                      batch_size=args.sample_batch_size * args.n)   # rows as sampling
        samples = sample_solutions(policy, tok, mine, n=args.n, temperature=args.temperature,
                                   top_k=args.top_k or None, max_new_tokens=args.max_new_tokens,
                                   seeds=[seeds[i * args.n + k] for i in share
                                          for k in range(args.n)],
                                   batch_size=args.sample_batch_size)
        del policy
    if args.rm:                                       # 2. score once; held-out ROC-AUC
        rm = load(args.rm, tok, dtype, args.device)
        if samples is not None:
            score_samples(rm, tok, samples, args.rm_batch_size)
        if args.rm_records:
            records = read_jsonl(args.rm_records)
            auc = auc_by_difficulty(rm, tok, records, args.rm_batch_size)
            if dist.is_main():
                write_text(out / "rm_auc.json", json.dumps(auc, indent=1) + "\n")
            dist.say("held-out RM ROC-AUC: " + json.dumps(auc))
        del rm
    if samples is not None:                           # 3. re-rank
        samples = dist.gathered_in_order(samples, len(problems), args.n)
        if greedy is not None:
            greedy = dist.gathered_in_order(greedy, len(problems), 1)
        if not dist.is_main():
            return
        if greedy is not None:
            write_jsonl(out / "greedy.jsonl", greedy)
        write_jsonl(out / "samples.jsonl", samples)
        table = rerank_table(samples, n_subsets=args.n_subsets, seed=args.seed, greedy=greedy,
                             with_rm=bool(args.rm))
        table["args"] = {**vars(args), "device": str(args.device)}
        write_text(out / "table.md", format_table(table))
        write_text(out / "table.json", json.dumps(table, indent=1) + "\n")   # last: the done-marker
        print(format_table(table))


def held_out_records(args, samples: list[dict]) -> list[dict]:
    """Step-labelled RM records the evaluators never trained on: --rm-records, or the first 4
    samples of each --synthetic-problems problem with program-checked labels."""
    if args.rm_records:
        return read_jsonl(args.rm_records)
    if not args.synthetic_problems:
        return []
    first = {}
    for s in samples:
        first.setdefault(s["id"], []).append(s)
    return prm_examples([s for group in first.values() for s in group[:4]],
                        read_jsonl(args.synthetic_problems), synthetic.label_solution)


def rescore(args):
    """Score saved samples with several evaluators and re-rank them (the same samples and
    subsets for every evaluator); the generator's own confidence as a baseline."""
    tok = Tokenizer(args.tokenizer)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = Path(args.out)
    if dist.is_main():
        (out / "rerank.json").unlink(missing_ok=True)   # the done-marker goes until this run writes it
    samples = read_jsonl(args.samples, ("id", "question", "level", "completion", "answer", "correct"))
    if not samples:
        raise ValueError(f"{args.samples}: no samples in the file")
    records = held_out_records(args, samples)
    mine = dist.shard_of(samples)
    tables, kept = {}, [{k: s[k] for k in ("id", "level", "completion", "answer", "correct")}
                        | {"scores": {}} for s in samples]
    for name, path in (x.split("=", 1) for x in args.rm):
        rm = load(path, tok, dtype, args.device)
        with torch.no_grad():
            scored = score_samples(rm, tok, [dict(s) for s in mine], args.rm_batch_size)
            auc = auc_by_difficulty(rm, tok, records, args.rm_batch_size)
        scored = dist.gathered_in_order(scored, len(samples), 1)
        for k, s in zip(kept, scored):
            k["scores"][name] = {"steps": s["step_scores"], "outcome": s["outcome_score"]}
        tables[name] = rerank_table(scored, n_subsets=args.n_subsets, seed=args.seed, with_rm=True)
        tables[name]["held_out_auc"] = auc
        tables[name]["within_auc"] = within_problem_auc(   # the score best-of-n ranks by
            scored, [sample_score(s, "min") for s in scored])
        del rm
    if args.confidence:   # does the signal exist in the generator itself?
        policy = load(args.confidence, tok, dtype, args.device)
        confidence = dist.gathered_in_order(min_token_probs(policy, tok, mine),
                                            len(samples), 1)
        tables["generator"] = {"within_auc": within_problem_auc(samples, confidence)}
        for k, c in zip(kept, confidence):
            k["scores"]["generator_min_token_prob"] = c
    if not dist.is_main():
        return
    tmp = out / ".scored_samples.jsonl.gz.tmp"
    with gzip.open(tmp, "wt") as f:
        f.writelines(json.dumps(k) + "\n" for k in kept)
    tmp.replace(out / "scored_samples.jsonl.gz")
    write_text(out / "rerank.json", json.dumps(tables) + "\n")


if __name__ == "__main__":
    code = guard(main, interrupted="interrupted; nothing is marked done: run the command again")
    dist.shutdown(clean=code == 0)
    sys.exit(code)
