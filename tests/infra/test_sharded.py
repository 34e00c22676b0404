"""e2h/hf/sharded.py: a checkpoint read into FSDP2 shards, rank by rank, equals load_model bit for
bit; a bad checkpoint gives load_model's error; the export gathers one tensor at a time and
writes what save_model writes. One process here, two gloo ranks in a subprocess."""
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from e2h.hf import sharded
from e2h.hf.checkpoint import load_model, save_model
from e2h.model import ModelArgs, Transformer
from e2h.rm import RewardModel
from test_distributed import ENV, GLOO_TEARDOWN_ABORT, ROOT, TORCHRUN

# vocab 63 and a (1,) bias: rows that do not split evenly over two ranks, one rank with none
ARGS = dict(vocab_size=63)


def checkpoints(tmp_path):
    """A bf16 policy in several files, an fp32 reward model; their paths."""
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", **ARGS))
    save_model(policy.to(torch.bfloat16), tmp_path / "policy", max_shard_bytes=20_000)
    rm = RewardModel(Transformer(ModelArgs.from_name("tiny", **ARGS, tie_embeddings=True)))
    torch.nn.init.normal_(rm.score.weight)
    torch.nn.init.normal_(rm.score.bias)
    save_model(rm, tmp_path / "rm")
    return tmp_path / "policy", tmp_path / "rm"


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_one_process_lazy_load_equals_load_model(tmp_path):
    policy, rm = checkpoints(tmp_path)
    assert len(list(policy.glob("*.safetensors"))) > 1
    for path in (policy, rm):
        lazy = sharded.lazy_model(path)
        assert sharded.is_lazy(lazy) and type(lazy) is type(load_model(path))
        model = sharded.place(lazy, "cpu")
        assert not sharded.is_lazy(model)
        assert same(model.state_dict(), load_model(path, dtype=torch.float32).state_dict())
    # a reward model on a policy checkpoint: the trunk read, the head zero
    model = sharded.place(RewardModel(sharded.lazy_model(policy)), "cpu")
    expected = RewardModel(load_model(policy, dtype=torch.float32)).state_dict()
    assert same(model.state_dict(), expected) and not model.score.weight.any()


def test_load_into_resets_a_trained_model(tmp_path):
    policy, _ = checkpoints(tmp_path)
    model = sharded.place(sharded.lazy_model(policy), "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    sharded.load_into(model, sharded.lazy_model(policy))
    assert same(model.state_dict(), load_model(policy, dtype=torch.float32).state_dict())
    other = Transformer(ModelArgs.from_name("tiny", **ARGS))   # a model in memory is copied
    sharded.load_into(model, other)
    assert same(model.state_dict(), other.state_dict())


def test_bad_checkpoint_same_error_before_anything_is_allocated(tmp_path):
    policy, _ = checkpoints(tmp_path)
    cfg = json.loads((policy / "config.json").read_text())
    (policy / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 80}))
    with pytest.raises(ValueError) as lazy:
        sharded.lazy_model(policy)
    with pytest.raises(ValueError) as eager:
        load_model(policy)
    assert str(lazy.value) == str(eager.value)
    assert "mlp" in str(lazy.value) and "(80, 32)" in str(lazy.value)


def test_export_writes_the_files_save_model_writes(tmp_path):
    policy, rm = checkpoints(tmp_path)
    for path in (policy, rm):
        model = load_model(path)
        sharded.export(model, tmp_path / "exported")
        save_model(model, tmp_path / "saved")
        names = sorted(p.name for p in (tmp_path / "saved").iterdir())
        assert names == sorted(p.name for p in (tmp_path / "exported").iterdir())
        for name in names:
            assert (tmp_path / "saved" / name).read_bytes() == (tmp_path / "exported" / name).read_bytes()


SCRIPT = r'''
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from safetensors.torch import load_file
from e2h.hf import checkpoint, sharded
from e2h.infra import distributed as dist, trainstate
from e2h.hf.checkpoint import load_model
from e2h.rm import RewardModel

dist.init()
r, W = dist.rank(), dist.world_size()
policy, rm, bad, out = map(Path, sys.argv[1:5])
requested = []                                  # (key, start, stop) this rank reads
read_rows = sharded.read_rows
def recording(targets, found):
    requested.extend((k, a, b, found[k][2][0]) for k, (_, a, b) in targets.items())
    read_rows(targets, found)
sharded.read_rows = recording

result = {}
for name, build in (("policy", lambda: sharded.lazy_model(policy)),
                    ("rm", lambda: sharded.lazy_model(rm)),
                    ("rm_on_policy", lambda: RewardModel(sharded.lazy_model(policy)))):
    model = build()
    model.trunk.embed_tokens.requires_grad_(False) if name != "policy" else model.norm.requires_grad_(False)
    model = sharded.place(model, "cpu")
    full = dist.full_state_dict(model)
    if r == 0:
        base = load_model(rm if name == "rm" else policy, dtype=torch.float32)
        expected = (RewardModel(base) if name == "rm_on_policy" else base).state_dict()
        result[name] = all(torch.equal(full[k], v) and full[k].dtype == v.dtype
                           for k, v in expected.items()) and full.keys() == expected.keys()
    local = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    result[name + "_local"] = [local, total]
# every rank asked for its torch.chunk rows of dim 0 only
chunk = lambda n: -(-n // W)
result["rows"] = all(a == min(r * chunk(n), n) and b == min(a + chunk(n), n)
                     for _, a, b, n in requested) and len(requested) > 0

# after training steps, ReST's restart reads the checkpoint back into the shards
model = sharded.place(sharded.lazy_model(policy), "cpu")
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
model(torch.tensor([[1, 2, 3, 4]])).logsumexp(-1).mean().backward()
opt.step()
sharded.load_into(model, sharded.lazy_model(policy))
full = dist.full_state_dict(model)
if r == 0:
    expected = load_model(policy, dtype=torch.float32).state_dict()
    result["load_into"] = all(torch.equal(full[k], v) for k, v in expected.items())

# export: rank 0 writes what save_model writes for the unsharded model
trainstate.export_model(model, out)
if r == 0:
    checkpoint.save_model(load_model(policy, dtype=torch.float32), out.parent / "saved")
    a, b = load_file(out / "model.safetensors"), load_file(out.parent / "saved" / "model.safetensors")
    result["export"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result["export_config"] = (out / "config.json").read_text() == (out.parent / "saved" / "config.json").read_text()

try:
    sharded.lazy_model(bad)
    result["bad"] = None
except ValueError as e:
    result["bad"] = str(e)
if r == 0:
    print(json.dumps(result))
dist.shutdown()
'''


def test_two_gloo_ranks_read_their_rows_and_equal_load_model(tmp_path):
    policy, rm = checkpoints(tmp_path)
    bad = tmp_path / "bad"
    save_model(load_model(policy), bad, max_shard_bytes=20_000)
    index = json.loads((bad / "model.safetensors.index.json").read_text())["weight_map"]
    key = "model.layers.1.self_attn.v_proj.weight"
    tensors = load_file(bad / index[key])
    tensors[key] = torch.zeros(8, 32, dtype=torch.bfloat16)
    from safetensors.torch import save_file
    save_file(tensors, str(bad / index[key]))
    with pytest.raises(ValueError) as eager:
        load_model(bad)

    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    cmd = TORCHRUN + [str(script), str(policy), str(rm), str(bad), str(tmp_path / "out" / "model")]
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    if result.returncode != 0 and GLOO_TEARDOWN_ABORT in result.stderr:
        result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["policy"] and out["rm"] and out["rm_on_policy"]
    for name in ("policy", "rm", "rm_on_policy"):
        local, total = out[name + "_local"]
        assert total / 2 - 64 <= local <= total / 2 + 64   # rank 0's half, give or take a row
    assert out["rows"] and out["load_into"] and out["export"] and out["export_config"]
    assert out["bad"] == str(eager.value) and key in out["bad"]
