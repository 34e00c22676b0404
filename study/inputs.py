"""The files a study seed reads before any stage runs: its test problems, held-out step
ratings, and the given records of quick mode."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from data import prm800k, synthetic
from data.format import EASY_LEVELS
from data.readers import load_math, write_jsonl


def write_inputs(seed: int, cfg: dict, root: Path, quick: bool):
    """The test problems of a seed (and, in quick mode, the ORM's given records)."""
    r = root / f"seed{seed}"
    r.mkdir(parents=True, exist_ok=True)
    write_jsonl(r / "test.jsonl", synthetic.make_split(cfg["test_problems"], seed=seed, split="test"))
    if quick:
        records, rng = [], random.Random(seed)
        for p in synthetic.make_split(4, levels=EASY_LEVELS, seed=seed, split="sft"):
            wrong = f"{(int(p['answer']) + rng.randint(1, 99)) % 100:02d}"
            for answer, label in ((p["answer"], 1), (wrong, 0)):
                records.append({"id": p["id"], "question": p["question"], "steps": p["steps"],
                                "answer": answer, "step_labels": [None] * len(p["steps"]),
                                "outcome_label": label, "level": p["level"]})
        write_jsonl(r / "orm_quick.jsonl", records)


def real_files(data_dir: Path, tokenizer=None) -> dict:
    """The ../shared/data files the real study reads (PRM800K, MATH, the Llama-2 tokenizer)."""
    files = {"steptree": data_dir / "prm800k/phase1_train_steptree.jsonl",
             "auc_steptree": data_dir / "prm800k/phase1_test_steptree.jsonl",
             "math": data_dir / "math/math_train_12k.jsonl",
             "test": data_dir / "math/math500_test.jsonl",
             "tokenizer": Path(tokenizer) if tokenizer else data_dir / "tokenizer/llama2/tokenizer.json"}
    for key, path in files.items():
        if not path.is_file():
            sys.exit(f"study: {path}: file not found (--data-dir {data_dir}, needed for {key})")
    return files


def write_real_inputs(seed: int, cfg: dict, root: Path, model: str, files: dict, quick: bool):
    """What the rerank / icl stages of a real seed read: settings, held-out PRM800K test step
    ratings (MATH500 problems, levels attached) and, in quick mode, the ORM's given records."""
    r = root / f"seed{seed}"
    r.mkdir(parents=True, exist_ok=True)
    test = load_math(files["test"])
    _, records = prm800k.load_prm800k_steptree(files["auc_steptree"], math_problems=test)
    records = [x for x in records if x["level"] is not None]
    if cfg["auc_records"]:   # the first few of each difficulty
        kept = {"easy": [], "hard": []}
        for x in records:
            group = kept["easy" if x["level"] <= 3 else "hard"]
            if len(group) < cfg["auc_records"]:
                group.append(x)
        records = kept["easy"] + kept["hard"]
    write_jsonl(r / "auc_records.jsonl", records)
    settings = {"mode": "real", "model": str(model), "test": str(files["test"]), "math": str(files["math"]),
                "tokenizer": str(files["tokenizer"]), "limit": cfg["test_limit"],
                "max_new_tokens": cfg["max_new_tokens"], "seed": seed}
    (r / "inputs.json").write_text(json.dumps(settings, indent=1) + "\n")
    if quick:
        rows = []
        for p in [p for p in load_math(files["math"]) if p["level"] in EASY_LEVELS][:4]:
            for answer, label in ((p["answer"], 1), (p["answer"] + "1", 0)):
                rows.append({"id": p["id"], "question": p["question"], "steps": p["steps"],
                             "answer": answer, "step_labels": [None] * len(p["steps"]),
                             "outcome_label": label, "level": p["level"]})
        write_jsonl(r / "orm_quick.jsonl", rows)
