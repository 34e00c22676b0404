"""What one run of train.py carries between its phases, and how its models are made.

A ``Run`` holds the flags, the run folder, the device and the tokenizer; it writes the metrics
log and the checkpoints, and ``finish`` exports the final model. ``sample`` spreads sampling
over the ranks. ``load_or_init`` + ``prepare`` make every model a recipe needs (an HF
checkpoint or a seeded random preset; frozen as the paper trains; sharded under torchrun).
Random streams are seeded from (seed, purpose, rank), so resuming needs no generator state.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from data import synthetic
from data.format import format_prompt
from data.readers import write_jsonl
from e2h.infra import distributed as dist
from e2h.infra import trainstate
from e2h.hf.checkpoint import check_tokenizer
from e2h.hf.hf_config import LM_ARCH, read_config
from e2h.infra.files import disk_errors, read_log, write_text
from e2h.model import PRESETS, ModelArgs, RewardModel, Transformer
from e2h.infra.runfolder import LOG
from e2h.sample import sample_solutions
from e2h.sft import freeze_embeddings
from e2h.hf.sharded import lazy_model, place
from e2h.tokenizer import Tokenizer, train_tokenizer


class Stopped(Exception):
    pass


@dataclass
class Run:
    """What every phase of one run shares."""
    args: argparse.Namespace
    out: Path
    device: torch.device
    tok: Tokenizer
    tok_path: Path
    resume: dict | None = None   # trainer.json of the checkpoint resumed from, and its "path"
    step: int = 0                # optimizer steps so far, over all phases
    last: dict | None = None     # the latest metrics line of a step

    def resume_from(self, ckpt: Path | None):
        """Continue after checkpoint ``ckpt`` (None: from step 0, with the data the run cached):
        its step, and metrics.jsonl cut back to it, atomically. The closing lines go too (the
        run ends again and writes them once more), validation lines of their own (an RL run
        validates again the phase its checkpoint ends, deterministically: greedy) and flag
        changes accepted at this step (this resume decides them again)."""
        if ckpt is not None:
            self.resume = {**trainstate.read_trainer(ckpt), "path": ckpt}
            self.step = self.resume["step"]

        def decided_here(x):
            validation = "loss" not in x and any(k.startswith("eval/") for k in x)
            return validation or "changed_flags" in x or any(k.startswith("final/") for k in x)
        kept = [x for x in read_log(self.out / LOG)
                if x["step"] < self.step or (x["step"] == self.step and not decided_here(x))]
        self.last = next((x for x in reversed(kept) if "loss" in x), None)
        if dist.is_main():
            write_text(self.out / LOG, "".join(json.dumps(x) + "\n" for x in kept))

    def autocast(self):
        # under FSDP the mixed-precision policy casts; a single process autocasts
        bf16 = self.compute_dtype() == torch.bfloat16 and not dist.is_distributed()
        return torch.autocast(self.device.type, torch.bfloat16) if bf16 else nullcontext()

    def compute_dtype(self):
        if self.args.dtype == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return getattr(torch, self.args.dtype)

    def log(self, record: dict):
        """Append one line to metrics.jsonl, in one write (a kill tears at most that line,
        which ``read_log`` leaves out)."""
        if "loss" in record:
            self.last = record
        if dist.is_main():
            with disk_errors(self.out / LOG), open(self.out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def phase_start(self, iteration: int) -> int | None:
        """Step within phase ``iteration`` to start from; None when the checkpoint is past it.
        A checkpoint at the end of the phase gives its last step (no steps left): what follows
        the phase (an RL iteration's validation) runs again, a stop may have come before it."""
        m = self.resume
        if m is None or m["iteration"] < iteration:
            return 0
        if m["iteration"] > iteration:
            return None
        return m["phase_step"]

    def restore(self, model, optimizers):
        """Load the checkpoint being resumed from, if any, into model and optimizers."""
        if self.resume is not None:
            trainstate.load(self.resume["path"], model, optimizers)

    def save(self, model, optimizers, meta: dict, export=None):
        path = trainstate.save(self.out, self.step, model, optimizers, meta, export=export,
                               tokenizer_path=self.tok_path, keep=self.args.keep)
        if self.args.stop_after and self.step >= self.args.stop_after:
            raise Stopped(f"stopped after {self.step} steps (--stop-after); checkpoint {path}; "
                          "continue with --resume")


def prepare(run: Run, model, trainable: bool = True, pretrained: bool = True):
    """Freeze as the paper does (embeddings, norms, LM head; not in a model trained from
    scratch), move to the device and shard (FSDP2 under torchrun); a checkpoint is read only
    now, each rank reading its shards. Frozen models are sharded too: PPO holds four models."""
    if not trainable:
        model.requires_grad_(False).eval()
    elif pretrained and not run.args.unfreeze_embeddings:
        freeze_embeddings(model)
    param_dtype = run.compute_dtype() if run.compute_dtype() != torch.float32 else None
    return place(model, run.device, param_dtype, run.args.activation_checkpointing)


def make_optimizer(model, args, lr: float | None = None):
    """AdamW on the trainable parameters; ``lr`` other than --lr follows the same schedule,
    scaled by lr / --lr (``lr_scale``, read by e2h/loop.py:set_lr). The scale is an attribute
    of the optimizer, not of its state: a resumed run takes it from its flags, not from the
    checkpoint."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = args.lr if lr is None else lr
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(args.betas), weight_decay=args.weight_decay)
    opt.lr_scale = lr / args.lr
    return opt


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
        problems = synthetic.make_split(200, seed=args.seed, split="sft")
        texts = [format_prompt(p["question"]) + synthetic.reference_completion(p) for p in problems]
        vocab = ModelArgs.from_name(args.preset).vocab_size
        train_tokenizer(texts, path, vocab_size=vocab)
    dist.barrier()
    return path


def check_model_dir(flag: str, path, reward: bool | None = None):
    """``path``, given as ``--flag``, is an HF model directory of the kind the flag takes
    (``reward``: a reward model; False: a policy; None: either), read from its config.json."""
    path = Path(path)
    if not path.is_dir():
        preset = str(path).replace("_", "-")
        hint = (f"; for a random model of the preset {preset!r} use --preset {preset}"
                if flag == "model" and preset in PRESETS else "")
        raise ValueError(f"--{flag} {path}: not a folder (an HF Llama directory with config.json)"
                         + hint)
    _, arch, _ = read_config(path)
    is_rm = arch != LM_ARCH
    if reward is not None and is_rm != reward:
        found = f"a reward model ({arch})" if is_rm else f"a policy ({arch})"
        raise ValueError(f"--{flag} {path}: {found}, but --{flag} takes "
                         f"{'a reward model' if reward else 'a policy'}")


def load_or_init(path, args, tok: Tokenizer) -> torch.nn.Module:
    """An HF checkpoint (fp32 master weights, on the meta device until ``prepare`` reads each
    rank's shards: sharded.lazy_model), else a seeded random ``--preset`` model sized to the
    tokenizer."""
    if path:
        model = lazy_model(path)
    else:
        torch.manual_seed(args.seed)
        model = Transformer(ModelArgs.from_name(args.preset, vocab_size=tok.vocab_size))
    check_tokenizer(tok, model)
    return model


def cached_records(run: Run, name: str, build) -> list:
    """<out>/data/<name>: reused when resuming (same examples), else built (on every rank:
    sampling is collective) and written by rank 0."""
    path = run.out / "data" / name
    if run.args.resume and path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    records = build()
    if dist.is_main():
        write_jsonl(path, records)
    return records


def load(run: Run, path, trainable: bool = True, pretrained: bool = True):
    """``load_or_init`` then ``prepare``: a model of this run, ready to train (or frozen)."""
    return prepare(run, load_or_init(path, run.args, run.tok), trainable, pretrained)


def on_every_rank(fn, problems_: list[dict], *models):
    """Run ``fn(my_problems)`` on this rank's share of the problems with the models' parameters
    gathered once (no collective per token); every rank gets all ranks' records, rank 0's
    first. ``fn`` returns (records, metrics): int metrics are summed over ranks, the others
    averaged."""
    mine = dist.shard_of(problems_)
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


def sample(run, policy, problems_, n, key, temperature=None, batch_size=None):
    """``n`` graded sample records per problem, each rank sampling its share (one gather);
    ``batch_size`` problems per generate call (default --sample-batch-size)."""
    args = run.args
    temperature = args.temperature if temperature is None else temperature
    batch_size = batch_size or args.sample_batch_size

    def draw(mine):
        gen = generator_for(args.seed, key, device=run.device)
        with run.autocast():
            return sample_solutions(policy, run.tok, mine, n=n, temperature=temperature,
                                    top_k=args.top_k or None, max_new_tokens=args.max_new_tokens,
                                    generator=gen, batch_size=batch_size), {}
    return on_every_rank(draw, problems_, policy)[0]


def finish(run, model, extra=None) -> dict:
    trainstate.export_model(model, run.out / "model", run.tok_path)
    summary = {"loss": run.last["loss"]} if run.last else {}
    summary.update(extra or {})
    if summary:
        run.log({"step": run.step, **{f"final/{k}": v for k, v in summary.items()}})
    return summary


def max_len(run, model) -> int:
    """--max-len, cut to the positions the model has."""
    trunk = model.trunk if isinstance(model, RewardModel) else model
    return min(run.args.max_len, trunk.args.max_seq_len)


def encode_all(encode, records: list[dict], what: str) -> list:
    """Encode every record, drop the ones with nothing to train on; refuse an empty data set."""
    encoded = [e for e in map(encode, records) if e is not None]
    if not encoded:
        raise ValueError(f"empty {what} data set ({len(records)} records, none with a target "
                         "token within --max-len); check --data, --levels and --max-len")
    return encoded

def generator_for(seed: int, *keys, device="cpu") -> torch.Generator:
    """A torch.Generator seeded from (seed, keys..., rank): a fresh, reproducible stream per use,
    so resuming needs no generator state."""
    key = "-".join(map(str, (seed, *keys, dist.rank())))
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
    return torch.Generator(device).manual_seed(seed)


def rng_for(seed: int, *keys) -> random.Random:
    return random.Random("-".join(map(str, (seed, *keys, dist.rank()))))
