"""The code's layout: the dependency graph between project modules has no circle, each layer
imports only the layers below it, a stage's cache key holds only the flags it uses, and no
top-level name of the repository is taken by the packages a Hugging Face user has installed."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("e2h", "data")


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
            path = ROOT / name.replace(".", "/")
            if name.split(".")[0] not in PACKAGES:
                continue
            if path.with_suffix(".py").is_file():
                found.add(name)
            elif (path / "__init__.py").is_file():
                found.add(name + ".__init__")
    return found


def graph() -> dict[str, set[str]]:
    """Module name (a package's ``__init__.py`` as ``<package>.__init__``) -> what it imports."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
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


# e2h/'s top level is the learner and its wiring; three subpackages hold the rest by role
LEARNER = {"e2h.model", "e2h.kv_cache", "e2h.rope", "e2h.tokenizer", "e2h.sequences", "e2h.sample",
           "e2h.score", "e2h.rerank", "e2h.paired", "e2h.sft", "e2h.rm", "e2h.ppo", "e2h.dpo",
           "e2h.rest", "e2h.grpo"}
WIRING = {"e2h.recipes", "e2h.rm_stage", "e2h.iterations", "e2h.loop", "e2h.run", "e2h.validate",
          "e2h.memory_check", "e2h.defaults", "e2h.flags"}
COMMANDS = {"e2h.evaluate", "e2h.icl", "e2h.curves", "e2h.memory"}


def test_layers():
    g = graph()
    for m, deps in g.items():
        if m.startswith("data."):   # data/ reads files and knows the format, no training code
            assert all(d.startswith(("data.", "e2h.grader.")) for d in deps), (m, deps)
        if m.startswith("e2h.grader."):   # the grader knows only text
            assert all(d.startswith("e2h.grader.") for d in deps), (m, deps)
        if m.startswith(("e2h.infra.", "e2h.hf.")):   # below the learner's objectives and wiring
            assert not deps & (LEARNER - {"e2h.model", "e2h.rope", "e2h.tokenizer"}
                               | WIRING | COMMANDS), (m, deps)
        if m not in COMMANDS:       # nothing in the library imports a command-line module
            assert not deps & (COMMANDS - {"e2h.curves", "e2h.memory"}), (m, deps)
        if m in LEARNER:            # the learner imports no wiring
            assert not deps & WIRING, (m, deps & WIRING)
    for m in [m for m in g if m.startswith("e2h.kernels.")]:   # attention knows only tensors
        assert all(d.startswith("e2h.kernels.") for d in g[m]), (m, g[m])
    assert "e2h.kernels.__init__" in g["e2h.model"]
    top = {p.stem for p in (ROOT / "e2h").glob("*.py")} - {"__init__", "svg"}
    assert {f"e2h.{name}" for name in top} == LEARNER | WIRING | COMMANDS, top
    assert {p.name for p in (ROOT / "e2h").iterdir() if (p / "__init__.py").is_file()} \
        == {"kernels", "grader", "hf", "infra"}


def test_study_imports_no_torch():
    code = "import sys; sys.path.insert(0, '.'); import study.main; print('torch' in sys.modules)"
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


# The top-level import names that transformers 5.25.0 and TRL 1.16.0 install with their
# requirements: the Requires-Dist lines of their METADATA (extras left out), followed through
# every requirement's own, and the top-level modules each of those distributions installs
# (its RECORD), read in a fresh environment in 2026-12. Distribution -> import names where they
# differ: pyyaml -> yaml, _yaml; python-dateutil -> dateutil; markdown-it-py -> markdown_it;
# hf-xet -> hf_xet; setuptools -> setuptools, _distutils_hack; sympy -> sympy, isympy;
# torch -> torch, torchgen, functorch; multiprocess -> multiprocess, _multiprocess.
HF_IMPORT_NAMES = {
    # transformers
    "transformers", "huggingface_hub", "numpy", "packaging", "yaml", "_yaml", "regex",
    "tokenizers", "typer", "safetensors", "tqdm", "kernels",
    # TRL
    "trl", "accelerate", "datasets", "jinja2", "pandas", "psutil", "pyarrow",
    # theirs
    "annotated_doc", "annotated_types", "anyio", "click", "dill", "filelock", "fsspec", "h11",
    "hf_xet", "httpcore2", "httpx2", "idna", "markdown_it", "markupsafe", "mdurl", "mpmath",
    "multiprocess", "_multiprocess", "networkx", "pydantic", "pydantic_core", "pygments",
    "dateutil", "rich", "setuptools", "_distutils_hack", "shellingham", "sympy", "isympy",
    "tomlkit", "torch", "torchgen", "functorch", "truststore", "typing_extensions",
    "typing_inspection", "tzdata", "xxhash", "_xxhash",
}


def test_no_top_level_name_is_installed_by_transformers_or_trl():
    # With the repository root on sys.path (scripts run from it, pytest, python -m) a module or
    # folder there named like an installed package is imported in its place: a top-level
    # kernels/ broke `from transformers import LlamaForCausalLM` once transformers required the
    # Hugging Face `kernels` package.
    ours = {p.stem for p in ROOT.glob("*.py")}
    ours |= {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert {"e2h", "data", "train", "study", "bench", "tests"} <= ours
    assert not ours & HF_IMPORT_NAMES, sorted(ours & HF_IMPORT_NAMES)


def cited_docs() -> list[tuple[str, str, list[str]]]:
    """(citing file, cited docs page, the section names quoted right after it) of every docs
    page the code and the docs cite: a docstring's `docs/paper.md, "RL", PPO` gives ["RL"],
    `docs/paper.md "Text format" / "Grading"` gives both names."""
    found = []
    for path in sorted([*ROOT.rglob("*.py"), *ROOT.rglob("*.md")]):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[0] == "runs" or path == Path(__file__):
            continue
        text = path.read_text()
        for m in re.finditer(r"docs/[\w-]+\.md", text):
            rest, names = text[m.end():], []
            sep = re.match(r"[,:]?\s*", rest)
            # a quoted name may wrap onto the next line of a docstring
            while sep and (q := re.match(r'"([^"\n]+(?:\n[^"\n]+)?)"', rest[sep.end():])):
                names.append(" ".join(q.group(1).split()))
                rest = rest[sep.end() + q.end():]
                sep = re.match(r"\s*(?:,|/|;|and)\s*(?=\")", rest)
            found.append((str(rel), m.group(), names))
    return found


def headings(path: Path) -> list[str]:
    """The Markdown headings of ``path``, outside fenced code blocks."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return [h.strip() for h in re.findall(r"^#+ (.+)$", text, re.M)]


def test_every_cited_doc_and_section_exists():
    cited = cited_docs()
    assert len(cited) >= 40 and sum(map(len, (names for _, _, names in cited))) >= 40
    for where, doc, names in cited:
        assert (ROOT / doc).is_file(), f"{where} cites {doc}, which does not exist"
        titles = headings(ROOT / doc)
        for name in names:   # "Reward models" names the section "Reward models (evaluators)"
            assert any(t == name or t.startswith(name + " (") for t in titles), \
                f'{where} cites {doc}, "{name}": no such section'
