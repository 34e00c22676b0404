"""The command lines a newcomer reads first: train.py's, e2h.evaluate's and e2h.icl's --help
(complete descriptions; every flag's default shown, or how it is filled), and the README's
commands (flags that exist, --model given a folder)."""
import argparse
import re
import shlex

import pytest

from conftest import ROOT
from e2h import evaluate, flags, icl
from e2h.model import PRESETS

PARSERS = {"train.py": flags.build_parser, "e2h.evaluate": evaluate.build_parser,
           "e2h.icl": icl.build_parser}


@pytest.mark.parametrize("command", PARSERS)
def test_help_describes_the_command_in_whole_sentences(command):
    description = PARSERS[command]().description
    assert description.endswith(".") and description.count("(") == description.count(")")


@pytest.mark.parametrize("command", PARSERS)
def test_every_flag_shows_its_default_or_how_it_is_filled(command):
    parser = PARSERS[command]()
    formatter = parser._get_formatter()
    checked = 0
    for action in parser._actions:
        if (not action.option_strings or action.required or action.default == argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction))):
            continue                        # --help, --config, required flags and switches
        shown = formatter._expand_help(action)
        flag = action.option_strings[0]
        assert "default:" in shown, f"{command} {flag}: --help says nothing of its default"
        if action.default is not None:      # a fixed default: its value, as argparse holds it
            assert f"default: {action.default}" in shown, f"{command} {flag}: {shown!r}"
        checked += 1
    assert checked >= {"train.py": 50, "e2h.evaluate": 18, "e2h.icl": 5}[command]
    help_text = parser.format_help()
    if command == "train.py":
        assert "DPO beta; default: paper 0.1; embedded 0.01" in " ".join(help_text.split())


def readme_commands() -> list[tuple[str, list[str]]]:
    """(command, its words) of every train.py / e2h.evaluate / e2h.icl line of the README's
    shell blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("  #")[0])
            for command in PARSERS:
                if command in words or (command == "train.py" and "train.py" in line):
                    start = next(i for i, w in enumerate(words) if w.endswith(command))
                    found.append((command, words[start + 1:]))
    return found


@pytest.mark.parametrize("command", PARSERS)
def test_every_flag_passes_through_torchruns_command_line(command, capsys):
    """torchrun reads the whole command line for its own options before it launches anything,
    so a flag that is a prefix of two of them ends the launch with "ambiguous option": --n
    (--nnodes, --nproc-per-node, --node-rank, ...). Every flag must pass, save e2h.evaluate's
    --n, the plain-python alias of --n-samples, which must be refused as its help says."""
    from torch.distributed.run import get_args_parser
    launcher = get_args_parser()
    script = ["train.py"] if command == "train.py" else ["-m", command]
    refused = []
    for action in PARSERS[command]()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                try:
                    args = launcher.parse_args(["--nproc_per_node", "2", *script, flag, "1"])
                except SystemExit:
                    refused.append(flag)
                    continue
                assert args.training_script_args == [flag, "1"], flag
    assert refused == (["--n"] if command == "e2h.evaluate" else []), refused
    capsys.readouterr()


def test_evaluate_reads_its_samples_per_problem_under_either_name():
    base = ["--out", "o", "--policy", "p", "--data", "d"]
    assert evaluate.build_parser().parse_args([*base, "--n-samples", "4"]).n == 4
    assert evaluate.build_parser().parse_args([*base, "--n", "3"]).n == 3


def test_the_readme_commands_use_flags_that_exist_and_models_that_are_folders():
    commands = readme_commands()
    assert {c for c, _ in commands} == {"train.py", "e2h.evaluate"} and len(commands) >= 4
    for command, words in commands:
        known = {o for a in PARSERS[command]()._actions for o in a.option_strings}
        for word in words:
            if word.startswith("--"):
                assert word in known, f"README: {command} has no flag {word}"
        for flag, value in zip(words, words[1:]):
            if flag == "--model":             # a preset name there is a preset, not a folder
                assert value.replace("_", "-") not in PRESETS, f"README: --model {value}"


def test_ppo_reward_constants_come_from_their_flags():
    from e2h import ppo, recipes
    # the defaults are the dataclass's (written once): the paper's u = 0.5, gamma = lambda = 1
    assert recipes.ppo_shaping(flags.get_args(["--algo", "ppo"])) == ppo.Rewards()
    assert ppo.Rewards() == ppo.Rewards(u=0.5, step_bonus=0.25, hard_reward=0.25,
                                        format_penalty=1.0, gamma=1.0, lam=1.0)
    args = flags.get_args(["--algo", "ppo", "--u", "0.4", "--step-bonus", "0.1", "--hard-reward",
                           "0.3", "--format-penalty", "0.5", "--gamma", "0.9", "--lam", "0.8"])
    assert recipes.ppo_shaping(args) == ppo.Rewards(u=0.4, step_bonus=0.1, hard_reward=0.3,
                                                    format_penalty=0.5, gamma=0.9, lam=0.8)
