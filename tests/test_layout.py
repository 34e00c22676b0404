"""The code's layout: the dependency graph between project modules has no circle, each layer
imports only the layers below it, and a stage's cache key holds only the flags it uses."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("e2h", "data", "kernels")


def project_imports(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and (ROOT / (name.replace(".", "/") + ".py")).is_file():
                found.add(name)
            elif name in PACKAGES:
                found.add(name + ".__init__") if (ROOT / name / "__init__.py").is_file() else None
    return found


def graph() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}"
            modules[name] = {m for m in project_imports(path) if m != name}
    return modules


def test_no_import_circle():
    g = graph()
    state = {}

    def visit(m, chain):
        if state.get(m) == "open":
            raise AssertionError("import circle: " + " -> ".join(chain + [m]))
        if state.get(m) == "done":
            return
        state[m] = "open"
        for dep in g.get(m, ()):
            visit(dep, chain + [m])
        state[m] = "done"

    for m in g:
        visit(m, [])


def test_layers():
    g = graph()
    cli = {"e2h.evaluate", "e2h.icl"}
    for m, deps in g.items():
        if m.startswith("data."):   # data/ reads files and knows the format, no training code
            assert deps <= {d for d in g if d.startswith("data.")} | {"e2h.grader"}, (m, deps)
        if m not in cli:            # nothing in the library imports a command-line module
            assert not deps & cli, (m, deps & cli)
    for algo in ("e2h.sft", "e2h.rm", "e2h.dpo", "e2h.ppo", "e2h.rest"):
        assert not g[algo] & {"e2h.recipes", "e2h.run", "e2h.loop"}, algo


def test_study_imports_no_torch():
    code = "import sys; sys.path.insert(0, '.'); import study; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_stage_cache_key_holds_only_the_flags_it_uses(tmp_path):
    sys.path.insert(0, str(ROOT))
    import train
    base = ["--algo", "dpo", "--out", str(tmp_path / "dpo")]
    sft = train.stage_dir(train.get_args(base), "sft")[0]
    # DPO's beta, PPO's KL coefficient: the SFT stage never reads them
    assert train.stage_dir(train.get_args(base + ["--beta", "0.5"]), "sft")[0] == sft
    assert train.stage_dir(train.get_args(base + ["--kl-coef", "0.5"]), "sft")[0] == sft
    # a shared flag given on the command line changes what the SFT stage trains on
    assert train.stage_dir(train.get_args(base + ["--max-len", "128"]), "sft")[0] != sft
    assert sft.parent == tmp_path / "cache" and sft.name.startswith("sft-")
    # nor does its key hold them, so a new default of either keeps the cached stages
    for stage in ("sft", "prm"):
        settings = train.stage_settings(train.get_args(["--algo", stage]))
        assert not {"beta", "kl_coef", "pair_gap", "rollouts"} & set(settings), stage
        assert {"lr", "max_len", "seed"} <= set(settings), stage
