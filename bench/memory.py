"""Peak resident memory per rank of train.py against the memory plan (e2h/memory.py), CPU.

For each shape, a random Llama checkpoint is written in bf16 (safetensors), then
``torchrun --nproc_per_node W train.py --algo sft --model <it> --max-steps 2`` runs on gloo
ranks: the checkpoint read shard by shard (e2h/hf/sharded.py), float32 master weights and compute,
embeddings / norms / LM head frozen as the paper trains, 2 micro-batches of 1 x --max-len
tokens per rank and step (gradient accumulation: gradients and activations peak together),
a checkpoint and the HF export at the end. Each rank records its peak resident set (VmHWM,
/proc/self/status) as it exits, the resident memory its first model's shards took, and the
plan train.py made for it at start-up (whose runtime term is the rank's resident memory then).
Every run twice: glibc malloc as it comes, and with a fixed mmap threshold (``MALLOC``).

    python bench/memory.py --worlds 1 2 4 --out /tmp/memory.md
    python bench/memory.py --load --worlds 1 2 4     # loading alone: before (eager) and now

Printed: per shape, malloc, world and rank, the plan's peak and the measured VmHWM (GiB), their
ratio, both relative to one rank's, the loaded shard measured and planned, seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

from e2h.model import ModelArgs  # noqa: E402

SHAPES = {   # vocabulary of Llama / Llemma; 134M, 229M (grouped-query attention), 271M
    "134M": dict(dim=768, n_layers=12, n_heads=12, ffn_dim=2048),
    "229M-gqa": dict(dim=1024, n_layers=12, n_heads=16, n_kv_heads=4, ffn_dim=3584),
    "271M": dict(dim=1024, n_layers=16, n_heads=16, ffn_dim=2816),
}
GiB = 2**30
# glibc's malloc keeps freed heap memory (its mmap threshold grows up to 32 MB, and tensors
# below it are carved from arenas that shrink only from the top): resident memory then counts
# tensors already freed. A fixed threshold hands every block of 64 KiB or more back on free.
MALLOC = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith(field + ":"))


def child(out: Path, argv: list[str]):
    """One torchrun rank: train.py as __main__, its plan recorded, the resident memory the
    first model's shards take, VmHWM written at the end."""
    from e2h import memory, memory_check
    from e2h.hf import sharded
    record, setup_for, place = {}, memory_check.setup_for, sharded.place

    def recording(args, device):
        st = setup_for(args, device)
        result = memory.plan(st)
        record.update(plan=result["peak"], phase=result["phase"], runtime=st.runtime,
                      params=dict(result["rows"])[next(k for k, _ in result["rows"]
                                                       if k.startswith("policy: parameters"))])
        return st

    def placing(model, *args, **kwargs):
        before = status("VmRSS")
        model = place(model, *args, **kwargs)
        record.setdefault("loaded", status("VmRSS") - before)
        return model
    memory_check.setup_for, sharded.place = recording, placing
    sys.argv = ["train.py", *argv]
    code = 0
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    rank = int(os.environ.get("RANK", 0))
    record.update(rank=rank, vmhwm=status("VmHWM"), code=code)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    sys.exit(code)


def load_child(out: Path, how: str, ckpt: Path):
    """One rank loading ``ckpt`` and sharding it, nothing else: ``eager`` as e2h did before
    (checkpoint.load_model in fp32 on every rank, then FSDP2), ``sharded`` as it does now."""
    from e2h.infra import distributed as dist
    from e2h.hf import sharded
    from e2h.hf.checkpoint import load_model
    dist.init()
    before = status("VmRSS")
    if how == "eager":
        model = dist.shard(load_model(ckpt, dtype=torch.float32))
    else:
        model = sharded.place(sharded.lazy_model(ckpt), "cpu")
    record = {"rank": dist.rank(), "peak": status("VmHWM") - before,
              "after": status("VmRSS") - before,
              "local": sum(4 * p.to_local().numel() for p in model.parameters())}
    (out / f"{how}{dist.rank()}.json").write_text(json.dumps(record))
    dist.shutdown()


def loading(work: Path, ckpt: Path, world: int, name: str, n: int) -> list[str]:
    """Table rows: resident memory a rank gains while loading, the eager way and the sharded."""
    out = work / "load"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **MALLOC["fixed"]}
    for how in ("eager", "sharded"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(world), __file__, "--load-child", str(out), how, str(ckpt)]
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"loading, world {world}: failed\n{result.stderr[-3000:]}")
    rows = []
    for r in range(world):
        e, s = (json.loads((out / f"{how}{r}.json").read_text()) for how in ("eager", "sharded"))
        rows.append(f"| {name} | {n / 1e6:.0f}M | {world} | {r} | {e['peak'] / GiB:.3f} | "
                    f"{s['peak'] / GiB:.3f} | {s['peak'] / e['peak']:.2f} | {s['after'] / GiB:.3f} | "
                    f"{s['local'] / GiB:.3f} |")
    return rows


def make_inputs(work: Path, max_len: int) -> tuple[Path, Path]:
    """A tokenizer trained on synthetic text and SFT records longer than ``max_len`` tokens."""
    from data import synthetic
    from data.format import format_prompt
    from e2h.tokenizer import train_tokenizer
    problems = synthetic.make_split(200, seed=0, split="sft")
    texts = [format_prompt(p["question"]) + synthetic.reference_completion(p) for p in problems]
    tok = train_tokenizer(texts, work / "tokenizer.json", vocab_size=512)
    records = []
    for p in problems[:16]:
        completion = "\n\n".join([synthetic.reference_completion(p)] * 40)
        assert len(tok.encode(completion)) > max_len
        records.append({"question": p["question"], "completion": completion, "level": 1})
    data = work / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return work / "tokenizer.json", data


def make_checkpoint(path: Path, shape: dict) -> int:
    from e2h.hf.checkpoint import save_model
    from e2h.model import Transformer
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(ModelArgs(vocab_size=32016, **shape))
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    model.init_weights()
    save_model(model, path)
    return sum(p.numel() for p in model.parameters())


def run(world: int, ckpt: Path, tok: Path, data: Path, work: Path, max_len: int,
        malloc: str) -> list[dict]:
    out = work / f"ranks-{world}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    argv = ["--algo", "sft", "--model", str(ckpt), "--tokenizer", str(tok), "--data", str(data),
            "--max-len", str(max_len), "--batch-size", str(2 * world), "--micro-batch-size", "1",
            "--max-steps", "2", "--keep", "1", "--out", str(work / f"run-{world}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(world), __file__, "--child", str(out), "--", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **MALLOC[malloc]}
    t0 = time.time()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"world {world}: train.py failed\n{result.stderr[-3000:]}")
    shutil.rmtree(work / f"run-{world}", ignore_errors=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    for r in ranks:
        r["seconds"] = time.time() - t0
    return ranks


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--load-child", nargs=3, default=None, help=argparse.SUPPRESS)
    p.add_argument("--load", action="store_true", help="loading only: the resident memory a "
                   "rank gains while the checkpoint is read, eager (before) against sharded")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--malloc", nargs="+", default=list(MALLOC), choices=list(MALLOC),
                   help="glibc malloc as it comes, and with MALLOC_MMAP_THRESHOLD_=65536")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--out", default=None, help="also write the Markdown table here")
    args, rest = p.parse_known_args()
    if args.child:
        return child(Path(args.child), rest[1:] if rest[:1] == ["--"] else rest)
    if args.load_child:
        out, how, ckpt = args.load_child
        return load_child(Path(out), how, Path(ckpt))
    if args.load:
        return load_table(args)
    lines = ["| shape | params | malloc | world | rank | plan peak | VmHWM | VmHWM / plan | peak / "
             "1 rank's: measured, plan | loaded shard: measured, plan | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="e2h-bench-memory-") as tmp:
        work = Path(tmp)
        tok, data = make_inputs(work, args.max_len)
        for name in args.shapes:
            ckpt = work / name
            n = make_checkpoint(ckpt, SHAPES[name])
            for malloc in args.malloc:
                base = None
                for world in args.worlds:
                    for r in run(world, ckpt, tok, data, work, args.max_len, malloc):
                        base = base or (r["vmhwm"], r["plan"])
                        lines.append(
                            f"| {name} | {n / 1e6:.0f}M | {malloc} | {world} | {r['rank']} | "
                            f"{r['plan'] / GiB:.2f} | {r['vmhwm'] / GiB:.2f} | "
                            f"{r['vmhwm'] / r['plan']:.3f} | {r['vmhwm'] / base[0]:.2f}, "
                            f"{r['plan'] / base[1]:.2f} | {r['loaded'] / GiB:.3f}, "
                            f"{r['params'] / GiB:.3f} | {r['seconds']:.0f} |")
                        print(lines[-1], flush=True)
            shutil.rmtree(ckpt)
    text = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; GiB\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def load_table(args):
    lines = ["| shape | params | world | rank | peak gain, eager load | peak gain, sharded load | "
             "sharded / eager | kept after sharded load | this rank's fp32 shards |",
             "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="e2h-bench-memory-") as tmp:
        work = Path(tmp)
        for name in args.shapes:
            n = make_checkpoint(work / name, SHAPES[name])
            for world in args.worlds:
                lines += loading(work, work / name, world, name, n)
                print(lines[-1], flush=True)
            shutil.rmtree(work / name)
    text = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"MALLOC_MMAP_THRESHOLD_=65536; GiB\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
