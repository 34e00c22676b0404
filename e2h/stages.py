"""What each algorithm trains on and starts from: hyper-parameter defaults, tokenizer, models,
data sets (the synthetic curriculum or the real files), and sampling spread over ranks.

Two sets of defaults (PAPER.md): ``paper`` holds the 7B hyper-parameters and applies when
pretrained weights (--model) or real data are given; ``embedded`` holds what a small model
trained from scratch on the synthetic curriculum needs to learn in a few CPU minutes (far
larger learning rates, small batches, fewer samples). Unset flags take the regime's value.

Data: ``--data`` files are recognised by their fields (MATH, MetaMathQA, GSM8K, Math-Shepherd,
PRM800K step trees or raw records, or the canonical SFT / RM / problem records of
data/format.py). Levels filter what is supervised: a record without a level (GSM8K, most of
MetaMathQA) is kept only with ``--levels all``, since it cannot be called easy.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import torch

from data import synthetic
from data.format import format_prompt
from e2h import distributed as dist
from e2h import sft
from e2h.model import ModelArgs, Transformer
from e2h.tokenizer import Tokenizer, train_tokenizer

PAPER = {   # PAPER.md, Llemma-7B
    "sft": dict(lr=2e-5, batch_size=128, epochs=3, max_len=768),
    "prm": dict(lr=2e-5, batch_size=128, epochs=2, max_len=768),
    "orm": dict(lr=2e-5, batch_size=128, epochs=2, max_len=1024, n_samples=32, top_k=20,
                temperature=0.7),
    "dpo": dict(lr=2e-6, batch_size=64, epochs=1, max_len=1024, iterations=5, n_samples=8,
                top_k=0, temperature=1.0),
    "rest": dict(lr=2e-5, batch_size=128, epochs=1, max_len=1024, iterations=2, n_samples=32,
                 top_k=40, temperature=1.0),
    "ppo": dict(lr=2e-5, batch_size=64, epochs=1, max_len=1024, ppo_steps=500, rollouts=512,
                top_k=50, temperature=0.7),
}
EMBEDDED = {   # the small preset from scratch on the synthetic curriculum, 2 CPU cores
    "sft": dict(lr=3e-3, batch_size=64, epochs=3, n_problems=3000),
    "prm": dict(lr=3e-4, batch_size=16, epochs=2, n_problems=300, n_samples=16, top_k=0,
                temperature=1.0),
    "dpo": dict(lr=1e-5, batch_size=32, epochs=1, n_problems=100, iterations=2, n_samples=8,
                top_k=0, temperature=1.0),
    "rest": dict(lr=1e-4, batch_size=32, epochs=1, n_problems=100, iterations=2, n_samples=8,
                 top_k=0, temperature=1.0),
    "ppo": dict(lr=1e-5, batch_size=32, epochs=1, n_problems=200, ppo_steps=20, rollouts=64,
                top_k=50, temperature=0.7),
}
# OPRM trains on the union of ORM and PRM data, with the ORM's settings (PAPER.md); on the
# embedded default every reward model samples its own data the same way
PAPER["oprm"] = PAPER["orm"]
EMBEDDED["orm"] = EMBEDDED["oprm"] = EMBEDDED["prm"]
COMMON = {"paper": dict(max_new_tokens=768, n_problems=0, eval_problems=0, warmup_ratio=0.2),
          "embedded": dict(max_len=256, max_new_tokens=96, eval_problems=100, warmup_ratio=0.05)}
RM_ALGOS = ("orm", "prm", "oprm")


def describe(key: str) -> str:
    """The defaults of ``key`` for --help: "paper 2e-05 (dpo 2e-06); embedded 0.003 (...)"."""
    parts = []
    for name, table in (("paper", PAPER), ("embedded", EMBEDDED)):
        values = {algo: {**COMMON[name], **t}.get(key) for algo, t in table.items()}
        values = {algo: v for algo, v in values.items() if v is not None}
        if not values:
            continue
        common = max(set(values.values()), key=list(values.values()).count)
        others = ", ".join(f"{algo} {v}" for algo, v in values.items() if v != common)
        parts.append(f"{name} {common}" + (f" ({others})" if others else ""))
    return "default: " + "; ".join(parts)


def fill_defaults(args):
    """Resolve the regime and give every unset (None) flag its regime's value, in place."""
    if args.hparams == "auto":
        # real weights or real data; a --policy alone may be an embedded run's output
        real = args.model or args.data or args.math_problems
        args.hparams = "paper" if real else "embedded"
    table = (PAPER if args.hparams == "paper" else EMBEDDED)[args.algo]
    for key, value in {**COMMON[args.hparams], **table}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.levels is None:   # PAPER.md: the best PPO row trains on all problems
        args.levels = "1,2,3,4,5" if args.algo == "ppo" else "1,2,3"
    if args.micro_batch_size is None:
        args.micro_batch_size = args.batch_size // dist.world_size()
    return args


def parse_levels(text: str) -> tuple[int, ...] | None:
    """"1,2,3" -> (1, 2, 3); "all" -> None (no filter)."""
    return None if text == "all" else tuple(int(x) for x in text.split(","))


def keep_level(record: dict, levels) -> bool:
    return levels is None or record.get("level") in levels


# ----------------------------------------------------------------------------- tokenizer, models


def setup_tokenizer(args, out: Path) -> Path:
    """Path of the tokenizer.json this run uses: --tokenizer, the one beside --model / --policy,
    else one trained on the synthetic corpus and saved in the run folder."""
    for source in (args.tokenizer, args.policy, args.model):
        if source:
            path = Path(source)
            path = path / "tokenizer.json" if path.is_dir() else path
            if not path.is_file():
                if source == args.tokenizer:
                    raise FileNotFoundError(f"{path}: tokenizer file not found")
                continue
            return path
    path = out / "tokenizer.json"
    if dist.is_main() and not path.is_file():
        problems = synthetic.make_split(200, seed=args.seed, split="train")
        texts = [format_prompt(p["question"]) + synthetic.reference_completion(p) for p in problems]
        vocab = ModelArgs.from_name(args.preset).vocab_size
        train_tokenizer(texts, path, vocab_size=vocab)
    dist.barrier()
    return path


def load_or_init(path, args, tok: Tokenizer) -> torch.nn.Module:
    """An HF checkpoint (fp32 master weights, on the meta device until loop.prepare reads each
    rank's shards: sharded.lazy_model), else a seeded random ``--preset`` model sized to the
    tokenizer."""
    from e2h.checkpoint import check_tokenizer
    from e2h.sharded import lazy_model
    if path:
        model = lazy_model(path)
    else:
        torch.manual_seed(args.seed)
        model = Transformer(ModelArgs.from_name(args.preset, vocab_size=tok.vocab_size))
    check_tokenizer(tok, model)
    return model


# ----------------------------------------------------------------------------- data


def _first_record(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return json.loads(line)
    raise ValueError(f"{path}: empty data file")


def data_format(path: Path) -> str:
    """Which reader a --data file needs, told by the fields of its first record."""
    first = _first_record(path)
    keys, answer = set(first), str(first.get("answer", ""))
    if "nodes" in keys:
        return "prm800k-steptree"
    if {"input", "label"} <= keys:
        return "math-shepherd"
    if {"question", "label"} <= keys:
        return "prm800k-raw"
    if {"problem", "solution", "unique_id"} <= keys:
        return "math"
    if "query" in keys or "The answer is:" in answer:
        return "metamath"
    if "#### " in answer:
        return "gsm8k"
    if "completion" in keys:
        return "sft"
    if "step_labels" in keys:
        return "rm"
    return "problems"


def read_data(paths, math_problems_path=None) -> dict[str, list[dict]]:
    """{"sft", "rm", "problems"} records from the --data files, each file by its fields, and
    "math", the --math-problems (answers and levels for PRM800K and Math-Shepherd rows)."""
    from data import prm800k, readers
    math = readers.load_math(math_problems_path) if math_problems_path else []
    out = {"sft": [], "rm": [], "problems": [], "math": math}
    for path in map(Path, paths or []):
        kind = data_format(path)
        if kind.startswith("prm800k"):
            tree = kind.endswith("steptree")
            load = prm800k.load_prm800k_steptree if tree else prm800k.load_prm800k_raw
            sft, rm = load(path, math_problems=math)
            out["sft"] += sft
            out["rm"] += rm
        elif kind == "math-shepherd":
            rm = readers.load_math_shepherd(path)
            readers.attach_levels(rm, math)
            out["rm"] += rm
        elif kind in ("math", "metamath", "gsm8k"):
            loader = {"math": readers.load_math, "metamath": readers.load_metamath,
                      "gsm8k": readers.load_gsm8k}[kind]
            problems = loader(path)
            readers.attach_levels(problems, math)   # MetaMathQA rows that quote MATH verbatim
            out["problems"] += problems
        elif kind == "sft":
            out["sft"] += readers.read_jsonl(path, ("question", "completion"))
        elif kind == "rm":
            out["rm"] += readers.read_jsonl(path, ("question", "steps", "answer", "step_labels",
                                                   "outcome_label"))
        else:
            out["problems"] += readers.read_jsonl(path, ("id", "question", "answer", "level"))
    return out


def rm_samples_policy(args) -> bool:
    """Whether a reward-model run samples solutions from a policy: always on the synthetic
    curriculum (its PRM labels are program-checked samples); with real data, ORM / OPRM sample
    the problems found in --data / --math-problems, and PRM trains on the rated steps given."""
    if args.hparams == "embedded" and not args.data:
        return True
    if args.algo == "prm":
        return False
    return bool(args.math_problems or read_data(args.data)["problems"])


def synthetic_problems(n_per_level: int, levels, seed: int, split: str = "train") -> list[dict]:
    levels = synthetic.SYNTHETIC_LEVELS if levels is None else levels
    return synthetic.make_split(n_per_level, levels=levels, seed=seed, split=split)


def sft_records(args) -> list[dict]:
    """Supervised examples: --data (SFT records, or problems with reference steps), else the
    reference solutions of synthetic problems. Only ``--levels`` are kept."""
    from data.readers import sft_example
    levels = parse_levels(args.levels)
    if args.hparams == "embedded" and not args.data:
        return [{"id": p["id"], "question": p["question"], "level": p["level"],
                 "completion": synthetic.reference_completion(p)}
                for p in synthetic_problems(args.n_problems, levels, args.seed)]
    data = read_data(args.data, args.math_problems)
    records = data["sft"] + [sft_example(p) for p in data["problems"] if p.get("steps")]
    return [r for r in records if keep_level(r, levels)]


def problems(args, split: str = "train") -> list[dict]:
    """Problems to sample from: --data / --math-problems (--n-problems: at most that many per
    level), else the synthetic curriculum."""
    levels = parse_levels(args.levels)
    if args.hparams == "embedded" and not (args.data or args.math_problems):
        return synthetic_problems(args.n_problems, levels, args.seed, split)
    data = read_data(args.data, args.math_problems)
    found = [p for p in data["problems"] + data["math"]
             if keep_level(p, levels) and p.get("answer")]
    if args.n_problems:   # at most n per level, in file order (quick runs)
        kept, count = [], Counter()
        for p in found:
            count[p.get("level")] += 1
            if count[p.get("level")] <= args.n_problems:
                kept.append(p)
        found = kept
    return found


def encode_sft(tok, record: dict, max_len: int):
    """(tokens, loss_mask) cut to max_len; None when nothing is left to train on."""
    tokens, mask = sft.encode_sft(tok, record)
    tokens, mask = tokens[:max_len], mask[:max_len]
    return (tokens, mask) if sum(mask[1:]) else None


def encode_all(encode, records: list[dict], what: str) -> list:
    """Encode every record, drop the ones with nothing to train on; refuse an empty data set."""
    encoded = [e for e in map(encode, records) if e is not None]
    if not encoded:
        raise ValueError(f"empty {what} data set ({len(records)} records, none with a target "
                         "token within --max-len); check --data, --levels and --max-len")
    return encoded


# ----------------------------------------------------------------------------- sampling on ranks


def shard_of(items: list) -> list:
    """This rank's share, rank r taking items r, r + W, r + 2W, ..."""
    return items[dist.rank()::dist.world_size()]


def on_every_rank(fn, problems_: list[dict], *models):
    """Run ``fn(my_problems)`` on this rank's share of the problems with the models' parameters
    gathered once (no collective per token); every rank gets all ranks' records, rank 0's
    first. ``fn`` returns (records, metrics): int metrics are summed over ranks, the others
    averaged."""
    mine = shard_of(problems_)
    with ExitStack() as stack:
        for m in models:
            stack.enter_context(dist.gathered(m))
        records, metrics = fn(mine)
    groups = dist.all_gather_objects(records)
    totals = dist.all_reduce_sum({k: float(v) for k, v in metrics.items()})
    # counts (ints) add up over ranks, rates (floats) are averaged
    metrics = {k: int(totals[k]) if isinstance(v, int) else totals[k] / dist.world_size()
               for k, v in metrics.items()}
    return [r for g in groups for r in g], metrics


def generator_for(seed: int, *keys, device="cpu") -> torch.Generator:
    """A torch.Generator seeded from (seed, keys..., rank): a fresh, reproducible stream per use,
    so resuming needs no generator state."""
    key = "-".join(map(str, (seed, *keys, dist.rank())))
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
    return torch.Generator(device).manual_seed(seed)


def rng_for(seed: int, *keys) -> random.Random:
    return random.Random("-".join(map(str, (seed, *keys, dist.rank()))))
