"""Runs that never lose work: bad inputs and faults met as a user meets them.

train.py and e2h.evaluate run in this process through the same top-level handler their command
lines use (``e2h.infra.errors.guard``), so each case costs a second or two; only the stalled
rank and the killed study runner need processes of their own.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from e2h.infra import errors, trainstate
from e2h import evaluate
from e2h.infra.errors import guard

ROOT = Path(__file__).resolve().parents[2]
T = ["--algo", "sft", "--preset", "tiny", "--batch-size", "8", "--n-problems", "4",
     "--eval-problems", "0", "--epochs", "10"]


def cli(capsys, *argv, main=train.main):
    """(exit code, stdout, stderr) of one command, run in this process."""
    code = guard(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


def log(out) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def names(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def sft(capsys, out, *extra):
    code, stdout, err = cli(capsys, *T, "--out", out, *extra)
    assert code == 0, err[-2000:]
    return stdout, err

# ----------------------------------------------------------------------------- one run per folder


def test_a_new_run_never_replaces_the_run_in_its_folder(tmp_path, capsys):
    out = tmp_path / "X"
    sft(capsys, out, "--max-steps", "6", "--save-every", "2")
    before = {p: p.read_bytes() for p in [out / "args.json", out / "metrics.jsonl",
                                          out / "model" / "model.safetensors"]}
    code, _, err = cli(capsys, *T, "--out", out, "--max-steps", "2", "--save-every", "2", "--seed", "1")
    assert code == 1
    assert last_line(err) == (f"error: --out {out} holds another run (checkpoints, model, "
                              "metrics.jsonl, done.json); continue it with --resume, choose a new "
                              "--out, or replace it with --overwrite")
    assert all(p.read_bytes() == b for p, b in before.items())
    assert names(out / "checkpoints") == ["step_000004", "step_000006"]
    # --overwrite: the old run's checkpoints go, so --keep can never prune the new run's
    stdout, _ = sft(capsys, out, "--max-steps", "2", "--save-every", "2", "--seed", "1", "--overwrite")
    assert "--overwrite: removing the run in" in stdout
    assert names(out / "checkpoints") == ["step_000002"]
    assert json.loads((out / "args.json").read_text())["seed"] == 1
    assert [x["step"] for x in log(out)] == [1, 2, 2]   # two steps and the closing line


def test_resume_refuses_other_flags_and_keeps_args_json(tmp_path, capsys):
    out = tmp_path / "Y"
    sft(capsys, out, "--max-steps", "6", "--stop-after", "2")
    args_json = (out / "args.json").read_bytes()
    code, _, err = cli(capsys, *T, "--out", out, "--max-steps", "6", "--resume", "--lr", "0.5")
    assert code == 1
    assert last_line(err) == (f"error: --resume: these flags differ from the run in {out} "
                              "(args.json): --lr 0.5 (was 0.003); resume with its flags, or accept "
                              "the change from step 2 with --allow-changed-flags")
    code, _, err = cli(capsys, *T, "--out", out, "--max-steps", "4", "--resume", "--preset", "small")
    assert code == 1 and "--max-steps 4 (was 6), --preset small (was tiny)" in last_line(err)
    assert (out / "args.json").read_bytes() == args_json
    assert [x["step"] for x in log(out)] == [1, 2]
    # accepted: logged at the step it takes effect, and the steps after it use it
    stdout, _ = sft(capsys, out, "--max-steps", "6", "--resume", "--lr", "0.5", "--allow-changed-flags",
                    "--stop-after", "3")
    assert "--allow-changed-flags: from step 2 on, --lr 0.5 (was 0.003)" in stdout
    lines = log(out)
    assert lines[2] == {"step": 2, "changed_flags": {"lr": [0.003, 0.5]}}
    assert lines[3]["step"] == 3 and lines[3]["learning_rate"] == pytest.approx(0.5 * 0.5 * (1 + 0.5), rel=1e-12)
    # (cosine over 6 steps without warmup at step index 2: 0.5 * (1 + cos(pi * 2 / 6)) = 0.75)
    assert (out / "args.json").read_bytes() == args_json
    # the next resume compares with the settings that trained its checkpoint: lr 0.5 from step 3
    code, _, err = cli(capsys, *T, "--out", out, "--max-steps", "6", "--resume")
    assert code == 1 and "--lr 0.003 (was 0.5)" in last_line(err)
    sft(capsys, out, "--max-steps", "6", "--resume", "--lr", "0.5")


def test_a_folder_in_use_is_refused_naming_its_holder_and_a_cached_stage_is_waited_for(
        models, tmp_path, capsys):
    from e2h.infra import folderlock, runfolder
    out = tmp_path / "X"
    holder = rf"pid {os.getpid()} on {re.escape(os.uname().nodename)}: .*"
    with folderlock.held(out):   # another open of the lock: what another process would hold
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, _, err = cli(capsys, *T, "--out", out, "--max-steps", "2", *extra)
            assert code == 1
            assert re.fullmatch(rf"error: --out {re.escape(str(out))} is in use by another run "
                                rf"\({holder}\); wait for it to end, or choose another --out",
                                last_line(err)), last_line(err)
        code, _, err = cli(capsys, "--policy", models / "policy", "--data", models / "problems.jsonl",
                           "--tokenizer", models / "tokenizer.json", "--out", out, "--n", "2",
                           "--device", "cpu", main=evaluate.main)
        assert code == 1 and re.fullmatch(rf"error: --out {re.escape(str(out))} is in use by "
                                          rf"{holder}; wait for it to end, or choose another --out",
                                          last_line(err)), last_line(err)
    assert names(out) == [".lock"]   # nothing was written there
    # a holder caught between its lock and its line: the refused process waits for the line
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "Y").mkdir()
    fd = os.open(tmp_path / "Y" / folderlock.NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(0.2, os.pwrite, [fd, b"pid 7 on elsewhere: train.py\n", 0]).start()
    with pytest.raises(folderlock.Held) as held:
        folderlock.take(tmp_path / "Y")
    os.close(fd)
    assert held.value.holder == "pid 7 on elsewhere: train.py"
    # a cached stage that another run is training: waited for, not refused
    fd = folderlock.take(tmp_path / "cache")
    threading.Timer(0.5, folderlock.release, [fd]).start()
    t0 = time.time()
    with runfolder.locked(tmp_path / "cache", wait=True, what="SFT stage", poll_s=0.05):
        assert time.time() - t0 >= 0.5
    assert f"waiting for the SFT stage in {tmp_path / 'cache'}: another run is training it (pid" \
        in capsys.readouterr().out
    os.close(folderlock.take(tmp_path / "cache"))   # released when the block ended


def test_two_runs_started_together_on_one_folder_one_is_refused(tmp_path):
    out = tmp_path / "X"
    runs = [subprocess.Popen([sys.executable, "train.py", *T, "--out", str(out), "--seed", str(seed),
                              "--max-steps", "1000", "--epochs", "1000"], cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    try:
        while all(r.poll() is None for r in runs):
            time.sleep(0.05)
        refused = next(r for r in runs if r.poll() is not None)
        kept = next(r for r in runs if r is not refused)
        _, err = refused.communicate()
        assert refused.returncode == 1
        assert re.fullmatch(rf"error: --out {re.escape(str(out))} is in use by another run \(pid "
                            rf"{kept.pid} on .*\); wait for it to end, or choose another --out",
                            last_line(err)), err[-2000:]
        while kept.poll() is None and not (out / "metrics.jsonl").is_file():
            time.sleep(0.05)
        kept.send_signal(signal.SIGTERM)   # the run that holds the folder is preempted
        _, err = kept.communicate(timeout=120)
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
    assert kept.returncode == 143, err[-2000:]
    seed = json.loads((out / "args.json").read_text())["seed"]
    assert seed == runs.index(kept)
    steps = [x["step"] for x in log(out)]
    assert steps == list(range(1, len(steps) + 1))   # one run's lines, none of the other's
    assert last_line(err) == (f"SIGTERM: stopped at step {steps[-1]}, checkpoint "
                              f"{trainstate.checkpoint_dir(out, steps[-1])}; the same command with "
                              "--resume continues from it")


def test_resume_takes_the_models_the_run_trained_with(tmp_path):
    """A resumed DPO run given no --policy uses the one in its args.json, not a new SFT stage."""
    from argparse import Namespace
    from e2h.infra import runfolder
    (tmp_path / "args.json").write_text(json.dumps({"algo": "dpo", "lr": 1e-6, "policy": "sft/model",
                                                   "reward_model": "prm/model", "resume": False}))
    args = Namespace(algo="dpo", lr=1e-6, policy=None, reward_model="prm/model", resume=True,
                     overwrite=False, allow_changed_flags=False)
    said = []
    assert runfolder.claim(tmp_path, args, train.NEUTRAL, ("policy", "reward_model"), said.append) \
        == (None, {})
    assert args.policy == "sft/model" and said == [f"--resume: no checkpoint in {tmp_path}; "
                                                   "starting from step 0 with its settings"]
    args.reward_model = "other/model"
    with pytest.raises(ValueError, match=r"--reward-model other/model \(was prm/model\)"):
        runfolder.claim(tmp_path, args, train.NEUTRAL, ("policy", "reward_model"), said.append)


def test_resume_without_a_checkpoint_says_what_it_does(tmp_path, capsys):
    stdout, _ = sft(capsys, tmp_path / "new", "--max-steps", "1", "--resume")
    assert f"--resume: no run in {tmp_path / 'new'} yet; starting one from step 0" in stdout
    out = tmp_path / "killed"   # a run killed before its first checkpoint: args.json, no checkpoint
    out.mkdir()
    (out / "args.json").write_text((tmp_path / "new" / "args.json").read_text())
    stdout, _ = sft(capsys, out, "--max-steps", "1", "--resume")
    assert f"--resume: no checkpoint in {out}; starting from step 0 with its settings" in stdout

# ----------------------------------------------------------------------------- --config


def test_a_runs_args_json_repeats_it(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    sft(capsys, a, "--max-steps", "3", "--lr", "0.002")
    code, _, err = cli(capsys, "--config", a / "args.json", "--out", b)
    assert code == 0, err[-2000:]
    untimed = lambda out: [{k: v for k, v in x.items() if k != "tokens_per_s"} for x in log(out)]
    assert len(log(a)) == 4 and untimed(b) == untimed(a)   # 3 steps and the closing line
    first, again = (json.loads((x / "args.json").read_text()) for x in (a, b))
    assert [k for k in first if first[k] != again[k]] == ["out"]   # explicit included


def test_config_flags_yield_to_the_command_line_and_unknown_keys_are_refused(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"algo": "dpo", "beta": 0.5, "lr": 1e-4, "betas": [0.8, 0.9],
                                  "unfreeze_embeddings": True, "hard_gap": None}))
    args = train.get_args(["--config", str(config), "--lr", "2e-4"])
    assert (args.algo, args.beta, args.lr, args.betas) == ("dpo", 0.5, 2e-4, [0.8, 0.9])
    assert args.unfreeze_embeddings and args.hard_gap is None and "config" not in vars(args)
    assert {"algo", "beta", "lr", "betas", "unfreeze_embeddings"} == set(args.explicit)
    # a run's args.json: only the flags that run was given, less how it treated its folder
    config.write_text(json.dumps({"algo": "sft", "lr": 0.5, "beta": 0.5, "resume": True,
                                  "stop_after": 2, "explicit": ["algo", "beta", "resume",
                                                                "stop_after"]}))
    args = train.get_args(["--config", str(config)])
    assert (args.beta, args.resume, args.stop_after) == (0.5, False, 0) and args.lr != 0.5
    config.write_text(json.dumps({"algo": "sft", "bta": 0.5}))
    code, _, err = cli(capsys, "--config", config)
    assert (code, last_line(err)) == (1, f"error: --config {config}: unknown key 'bta' (not a "
                                         "train.py flag)")

# ----------------------------------------------------------------------------- the metrics log


def test_the_log_survives_a_kill_while_cut_back_torn_lines_and_repeated_resumes(tmp_path, capsys,
                                                                                monkeypatch):
    out = tmp_path / "Z"
    sft(capsys, out, "--max-steps", "4", "--save-every", "2")
    whole = log(out)
    assert [x["step"] for x in whole] == [1, 2, 3, 4, 4] and "final/loss" in whole[-1]
    for _ in range(2):   # a finished run resumed twice still ends with one closing line
        sft(capsys, out, "--max-steps", "4", "--save-every", "2", "--resume")
    assert log(out) == whole
    # a kill in the middle of a step's line leaves a torn last line; resuming leaves it out
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 3.')
    sft(capsys, out, "--max-steps", "4", "--save-every", "2", "--resume")
    assert log(out) == whole
    # a kill while the log is cut back: the rename never happens, the old log stays whole
    before = (out / "metrics.jsonl").read_bytes()

    def killed(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr("e2h.infra.files.os.replace", killed)
    code, _, _ = cli(capsys, *T, "--out", out, "--max-steps", "4", "--save-every", "2", "--resume")
    assert code == 130 and (out / "metrics.jsonl").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

# ----------------------------------------------------------------------------- the NaN guard


def test_a_blow_up_never_leaves_a_bad_checkpoint_named_good(tmp_path, capsys):
    out = tmp_path / "N"
    sft(capsys, out, "--max-steps", "6", "--save-every", "1", "--stop-after", "2")
    code, _, err = cli(capsys, *T, "--out", out, "--max-steps", "6", "--save-every", "1",
                       "--resume", "--lr", "1e30", "--allow-changed-flags")
    # update 3 makes the weights ~1e29 (finite); step 4's loss is NaN: step_3 is not good
    assert code == 1
    assert last_line(err).startswith("error: loss is nan and grad_norm is nan at step 4; stopped "
                                     "before updating or saving; checkpoint step_000003")
    assert f"Last good checkpoint: {out / 'checkpoints' / 'step_000002'}" in last_line(err)
    assert names(out / "checkpoints") == ["step_000002", "step_000003.nonfinite"]
    assert max(w.abs().max().item() for w in weights(out / "checkpoints/step_000003.nonfinite/model").values()) > 1e20
    assert max(w.abs().max().item() for w in weights(out / "checkpoints/step_000002/model").values()) < 100
    # a plain --resume (the run's own lr) continues from the good checkpoint and finishes
    stdout, _ = sft(capsys, out, "--max-steps", "6", "--save-every", "1", "--resume")
    assert f"resuming from {out / 'checkpoints' / 'step_000002'} (step 2)" in stdout
    assert [x["step"] for x in log(out) if "loss" in x] == [1, 2, 3, 4, 5, 6]


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    from argparse import Namespace
    from e2h.loop import run_steps
    from e2h.run import Run
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=1.0)
    args = Namespace(lr=1.0, warmup_ratio=0.0, min_lr_ratio=0.0, save_every=1, stop_after=0)
    run = Run(args, tmp_path, torch.device("cpu"), None, None)
    saved = []

    def step(k):
        with torch.no_grad():
            w[k] = float("inf") if k == 1 else 2.0   # a finite loss, then an overflowing update
        return {"loss": 1.0, "tokens": 1}
    with pytest.raises(errors.NonFiniteLoss, match="the weights are not finite after step 2; not saved"):
        run_steps(run, 3, 0, [opt], step, saved.append)
    assert saved == [0]

# ----------------------------------------------------------------------------- verified checkpoints


def test_a_damaged_newest_checkpoint_is_reported_and_the_intact_one_resumed(tmp_path, capsys):
    sft(capsys, tmp_path / "whole", "--max-steps", "6", "--save-every", "2")
    out = tmp_path / "parts"
    sft(capsys, out, "--max-steps", "6", "--save-every", "2", "--stop-after", "4")
    shard = out / "checkpoints/step_000004/state/__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01   # one flipped bit inside a tensor
    shard.write_bytes(bytes(data))
    stdout, _ = sft(capsys, out, "--max-steps", "6", "--save-every", "2", "--resume")
    assert (f"checkpoint {out / 'checkpoints/step_000004'} is damaged (state/__0_0.distcp does not "
            "match its sha256 (the bytes changed after it was written)); set aside as "
            "step_000004.damaged, trying the previous one") in stdout
    assert f"resuming from {out / 'checkpoints/step_000002'} (step 2)" in stdout
    a, b = weights(tmp_path / "whole/model"), weights(out / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert names(out / "checkpoints") == ["step_000004", "step_000004.damaged", "step_000006"]


@pytest.mark.parametrize("damage, problem", [
    (lambda c: (c / "state/.metadata").write_bytes(b"garbage"), "state/.metadata has 7 bytes"),
    (lambda c: (c / "trainer.json").write_text('{"step": 3'), "trainer.json has 10 bytes"),
    (lambda c: (c / "rng/rank0.pt").unlink(), "rng/rank0.pt missing"),
    (lambda c: (c / "manifest.json").write_text("{"), "manifest.json unreadable"),
])
def test_every_kind_of_damage_falls_back_to_the_previous_checkpoint(tmp_path, damage, problem):
    from e2h.model import ModelArgs, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    first = trainstate.save(tmp_path, 1, model, [opt], {"iteration": 0})
    second = trainstate.save(tmp_path, 2, model, [opt], {"iteration": 0})
    damage(second)
    said = []
    assert trainstate.newest_intact(tmp_path, said.append) == first
    assert len(said) == 1 and f"is damaged ({problem}" in said[0]
    assert (tmp_path / "checkpoints" / "step_000002.damaged").is_dir()
    assert trainstate.latest(tmp_path) == first

# ----------------------------------------------------------------------------- one line per failure


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny policy and reward model with their tokenizer, and a problem file."""
    from data.format import format_prompt
    from data.synthetic import make_split, reference_completion
    from e2h.hf.checkpoint import save_model
    from e2h.model import ModelArgs, RewardModel, Transformer
    from e2h.tokenizer import train_tokenizer
    root = tmp_path_factory.mktemp("models")
    problems = make_split(2, seed=0)
    tok = train_tokenizer([format_prompt(p["question"]) + reference_completion(p) for p in problems],
                          root / "tokenizer.json", vocab_size=64)
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    save_model(policy, root / "policy")
    save_model(RewardModel.from_policy(policy), root / "rm")
    for m in ("policy", "rm"):
        tok.save(root / m / "tokenizer.json")
    (root / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems[:2]))
    return root


def test_evaluate_bad_inputs_are_one_line_errors(models, tmp_path, capsys):
    m = models
    base = ["--tokenizer", m / "tokenizer.json", "--out", tmp_path / "e", "--n", "2",
            "--max-new-tokens", "4", "--no-greedy", "--device", "cpu"]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"id": "a", "question": "q", "answer": "1", "level": 1}\n{"id": \n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"id": "a", "question": "caf\u00e9", "answer": "1", "level": 1}\n'.encode("latin-1"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["--policy", m / "policy", "--rm", m / "policy", "--data", m / "problems.jsonl"],
         f"--rm {m / 'policy'}: a policy (LlamaForCausalLM), but --rm takes a reward model"),
        (["--policy", m / "rm", "--data", m / "problems.jsonl"],
         f"--policy {m / 'rm'}: a reward model (LlamaForTokenClassification), but --policy takes a policy"),
        (["--policy", m / "policy", "--data", bad_json], f"{bad_json}:2: malformed JSON"),
        (["--policy", m / "policy", "--data", empty], f"{empty}: no problems in the file"),
        (["--policy", m / "policy", "--data", latin], f"{latin}:1: not UTF-8 text (byte 0xe9 at column 29)"),
        (["--policy", m / "policy", "--data", m / "problems.jsonl", "--out", a_file / "e"],
         f"{a_file / 'e'}: Not a directory; a part of the path is a file, not a folder"),
    ]
    for argv, message in cases:
        code, _, err = cli(capsys, *base, *argv, main=evaluate.main)
        assert code == 1, err
        assert last_line(err).startswith(f"error: {message}"), (last_line(err), message)
        assert "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        evaluate.main([*map(str, base), "--policy", str(m / "policy"), "--data",
                       str(m / "problems.jsonl"), "--n", "0"])
    assert e.value.code == 2 and "--n: must be > 0, got 0" in capsys.readouterr().err


def test_train_bad_inputs_are_one_line_errors(models, tmp_path, capsys, monkeypatch):
    m = models
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    array = tmp_path / "array.jsonl"
    array.write_text('["question", "completion"]\n')
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"question": "caf\u00e9", "completion": "x", "level": 1}\n'.encode("latin-1"))
    level7 = tmp_path / "level7.jsonl"
    level7.write_text('{"question": "q", "completion": "c", "level": 1}\n'
                      '{"question": "q", "completion": "c", "level": 7}\n')
    o = ["--out", tmp_path / "run"]
    cases = [
        (["--out", a_file / "run"], f"{a_file / 'run'}: Not a directory; a part of the path is a file"),
        (["--model", a_file], f"--model {a_file}: not a folder (an HF Llama directory with config.json)"),
        (["--algo", "dpo", "--policy", m / "rm", "--reward-model", m / "rm", *o],
         f"--policy {m / 'rm'}: a reward model (LlamaForTokenClassification), but --policy takes a policy"),
        (["--algo", "dpo", "--policy", m / "policy", "--reward-model", m / "policy", *o],
         f"--reward-model {m / 'policy'}: a policy (LlamaForCausalLM), but --reward-model takes a reward model"),
        (["--data", array, *o], f"{array}:1: expected a JSON object, got list"),
        (["--data", latin, *o], f"{latin}:1: not UTF-8 text (byte 0xe9 at column 18)"),
        (["--data", level7, *o], f"{level7}:2: unknown level 7 (expected 1-5)"),
    ]
    for argv, message in cases:
        code, _, err = cli(capsys, *T, *argv)
        assert code == 1, err
        assert last_line(err).startswith(f"error: {message}"), (last_line(err), message)
        assert "Traceback" not in err

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "disk" / "model.safetensors"))
    monkeypatch.setattr(trainstate, "save", full)
    code, _, err = cli(capsys, *T, "--out", tmp_path / "disk", "--max-steps", "1")
    assert code == 1 and "Traceback" not in err
    assert last_line(err) == (f"error: {tmp_path / 'disk' / 'model.safetensors'}: No space left on "
                              "device; the disk is full: free space and run the command again")
    assert "\nerror:" in err   # on a line of its own, not after the progress bar


def test_a_failed_write_is_told_as_the_disk_error_it_is(tmp_path):
    import errno
    from e2h.infra import distributed
    from e2h.infra.files import disk_errors
    from e2h.model import ModelArgs, Transformer

    class Wrapped(BaseException):   # like DCP's CheckpointException, which keeps only text
        pass
    for raised in (RuntimeError("Error while serializing: I/O error: No space left on device "
                                "(os error 28)"),                       # safetensors
                   Wrapped("Traceback ...\nOSError: [Errno 28] No space left on device")):
        with pytest.raises(OSError) as e, disk_errors(tmp_path):
            raise raised
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path)
    with pytest.raises(RuntimeError, match="a bug"), disk_errors(tmp_path):
        raise RuntimeError("a bug")   # not a disk error: left alone
    # DCP's own wrapper is opened: the OSError of the failed write comes out
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    model = Transformer(ModelArgs.from_name("tiny"))
    with pytest.raises(OSError) as e:
        distributed.save_state(a_file / "state", model, [torch.optim.AdamW(model.parameters())])
    assert e.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_ctrl_c_says_where_the_run_stopped(tmp_path, capsys, monkeypatch):
    from e2h.run import Run
    logged = Run.log

    def log_then_interrupt(self, record):
        logged(self, record)
        if record.get("step") == 3 and "loss" in record:
            raise KeyboardInterrupt
    monkeypatch.setattr(Run, "log", log_then_interrupt)
    out = tmp_path / "C"
    code, _, err = cli(capsys, *T, "--out", out, "--max-steps", "6", "--save-every", "2")
    assert code == 130 and "Traceback" not in err
    assert last_line(err) == (f"interrupted at step 3; --resume continues from "
                              f"{out / 'checkpoints' / 'step_000002'}")
    assert "\ninterrupted" in err


def test_a_stop_signal_waits_for_the_safe_point_and_exits_128_plus_its_number(capsys):
    from e2h.infra import preemption
    before = signal.getsignal(signal.SIGTERM)
    with preemption.handled():
        with pytest.raises(preemption.Preempted) as e:   # no step to finish: at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert (e.value.name, e.value.code) == ("SIGTERM", 128 + 15)
        with pytest.raises(preemption.Preempted) as e:
            with preemption.deferred():   # a step, a checkpoint write: recorded, finished
                with preemption.deferred():
                    os.kill(os.getpid(), signal.SIGUSR1)
                assert preemption.requested() == signal.SIGUSR1
            raise AssertionError("not reached: the outermost block raises as it ends")
        assert (e.value.name, e.value.code) == ("SIGUSR1", 128 + 10)
        assert preemption.requested() is None   # answered
    assert signal.getsignal(signal.SIGTERM) is before

    def main(argv):
        os.kill(os.getpid(), signal.SIGHUP)
    assert guard(main, interrupted="nothing to resume") == 128 + 1
    assert last_line(capsys.readouterr().err) == "SIGHUP: nothing to resume"


def test_canonical_records_without_a_level_are_counted_and_levels_must_be_1_to_5(tmp_path, capsys):
    from data import sources
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "question": "q", "completion": "c",
                                        "level": level}) + "\n"
                            for i, level in enumerate([1, "Level 2", "Level ?", None, 4])))
    with pytest.warns(UserWarning, match=r"SFT data: skipped 2 records with no level \(kept only "
                                         r"with --levels all\): r2, r3"):
        kept = sources.sft_records([data], None, (1, 2, 3), 0, 0)
    assert [r["id"] for r in kept] == ["r0", "r1"] and kept[1]["level"] == 2
    assert len(sources.sft_records([data], None, None, 0, 0)) == 5
    with pytest.raises(SystemExit):
        train.get_args(["--algo", "sft", "--levels", "12"])
    assert "--levels '12': expected levels 1-5" in capsys.readouterr().err


def test_the_table_goes_up_to_n_itself():
    from e2h.rerank import rerank_table
    samples = [{"id": "p", "question": "p", "completion": "", "answer": "1", "correct": True,
                "level": 1, "step_scores": [], "outcome_score": None}] * 3
    assert rerank_table(samples, n_subsets=1)["ns"] == [1, 2, 3]

# ----------------------------------------------------------------------------- the study's stages


def test_a_stage_is_done_only_by_a_readable_marker(tmp_path):
    from study import main as study
    from e2h.infra import runfolder
    from study.runner import Job, lock, run_jobs
    assert study.DONE == runfolder.DONE   # train.py's marker, the one the study waits for
    marker = tmp_path / "table.json"
    marker.write_text("")   # what an in-place write killed at its start leaves
    job = Job("s", [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('{{}}')"], marker)
    assert not job.done()
    fd = lock(tmp_path)
    try:
        assert set(run_jobs([job], 1, tmp_path / "logs", fd)) == {"s"}   # redone, not cached
    finally:
        os.close(fd)
    assert json.loads(marker.read_text()) == {}


def test_evaluate_marks_done_last(models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e"
    out.mkdir()
    (out / "table.json").write_text("{}")   # a previous run's marker
    real = evaluate.write_text

    def killed_at_the_marker(path, text):
        if Path(path).name == "table.json":
            raise KeyboardInterrupt
        return real(path, text)
    monkeypatch.setattr(evaluate, "write_text", killed_at_the_marker)
    code, _, _ = cli(capsys, "--policy", models / "policy", "--data", models / "problems.jsonl",
                     "--tokenizer", models / "tokenizer.json", "--out", out, "--n", "2",
                     "--max-new-tokens", "4", "--no-greedy", "--device", "cpu", main=evaluate.main)
    assert code == 130 and not (out / "table.json").exists() and (out / "table.md").is_file()


def test_failed_stage_is_one_line_and_a_second_runner_is_refused(tmp_path):
    from study.runner import Job, lock, run_jobs
    fd = lock(tmp_path)
    try:
        with pytest.raises(errors.Failed, match=r"in use by another study or stages it started \(pid \d+ on "):
            lock(tmp_path)
        job = Job("seed0/bad", [sys.executable, "-c", "import sys; sys.exit('error: --lr: bad')"],
                  tmp_path / "never.json")
        with pytest.raises(errors.Failed, match=r"stage seed0/bad failed \(exit 1\): error: --lr: "
                                                r"bad \(log: .*seed0_bad.log\); running python -m study again"):
            run_jobs([job], 1, tmp_path / "logs", fd)
    finally:
        os.close(fd)


RUNNER = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from study.runner import Job, lock, run_jobs
runs = Path({runs!r})
stage = [sys.executable, "-c", "import os, time; open({pid!r}, 'w').write(str(os.getpid())); time.sleep(60)"]
run_jobs([Job("s", stage, runs / "done.json")], 1, runs / "logs", lock(runs))
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:   # a zombie has ended
        return f.read().split()[2] != "Z"


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_ending_the_runner_ends_its_stages(tmp_path, how):
    from study.runner import lock
    pid_file = tmp_path / "stage.pid"
    code = RUNNER.format(root=str(ROOT), runs=str(tmp_path / "runs"), pid=str(pid_file))
    runner = subprocess.Popen([sys.executable, "-c", code])
    t0 = time.time()
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() - t0 < 60:
        time.sleep(0.05)
    stage = int(pid_file.read_text())
    assert alive(stage)
    runner.send_signal(how)
    runner.wait(30)
    t0 = time.time()
    while alive(stage) and time.time() - t0 < 15:
        time.sleep(0.05)
    assert not alive(stage)
    os.close(lock(tmp_path / "runs"))   # the lock went with them

# ----------------------------------------------------------------------------- a stalled rank


STALL = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from e2h.infra import distributed as dist
from e2h.infra.errors import guard

def main(argv):
    dist.init(timeout_s=3)
    if dist.rank() == 1:
        os.kill(os.getpid(), signal.SIGSTOP)   # a stalled rank
    t0 = time.time()
    try:
        dist.barrier()
    finally:
        print(f"{{time.time() - t0:.1f}}", flush=True)
sys.exit(guard(main))
"""


def test_a_stalled_rank_fails_the_others_within_the_timeout(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517",
           "OMP_NUM_THREADS": "1"}
    script = STALL.format(root=str(ROOT))
    ranks = [subprocess.Popen([sys.executable, "-c", script], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        waited, err = ranks[0].communicate(timeout=180)
    finally:
        ranks[1].kill()
        ranks[1].wait()
    assert ranks[0].returncode == 1 and "Traceback" not in err
    assert last_line(err) == ("rank 0: error: another rank did not answer for 3 s (--dist-timeout), "
                              "so this one gave up; the newest checkpoint is intact and --resume continues")
    assert 3 <= float(waited) < 30   # the default is 600 s; gloo's own, 30 minutes
    assert train.get_args(["--algo", "sft", "--dist-timeout", "3"]).dist_timeout == 3.0
    assert "dist_timeout" in train.NEUTRAL
