"""docs/tour.md runs: every ```python block prints exactly the ```text block written under it.

Each snippet runs in a fresh namespace in this process (one torch thread, see conftest.py) and
its stdout is compared with the expected text exactly, after stripping trailing whitespace of
each line. There is no float tolerance: the snippets round what they print (``round(x, 4)``),
so a changed digit is a changed result. The tour derives each expected output by hand in the
prose under it.

Every `path.py:name` the tour cites must exist, so a renamed function breaks the tour too.
"""
import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "docs" / "tour.md"
BLOCK = re.compile(r"```python\n(.*?)```\n+```text\n(.*?)```", re.S)


def snippets() -> list[tuple[str, str, str]]:
    """(stop title, code, expected output) of every python block and the text block after it."""
    text = TOUR.read_text()
    found = []
    for m in BLOCK.finditer(text):
        titles = re.findall(r"^## (.+)$", text[:m.start()], re.M)
        found.append((titles[-1] if titles else "intro", m.group(1), m.group(2)))
    return found


def normalized(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip("\n").splitlines())


def test_every_python_block_has_its_output():
    n_python = TOUR.read_text().count("```python\n")
    assert n_python == len(snippets()) >= 12, "a ```python block without a ```text block under it"


@pytest.mark.parametrize("title,code,expected", snippets(),
                         ids=["stop-" + t.split(".")[0] for t, _, _ in snippets()])
def test_snippet_prints_what_the_tour_says(title, code, expected):
    out = io.StringIO()
    # the snippets seed torch's global generator: leave the rest of the session's RNG untouched
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(out):
        exec(compile(code, f"tour: {title}", "exec"), {"__name__": "__tour__"})
    assert normalized(out.getvalue()) == normalized(expected), title


def test_cited_functions_exist():
    cited = set(re.findall(r"`((?:[\w]+/)*[\w]+)\.py:(\w+)`", TOUR.read_text()))
    assert len(cited) >= 12
    for path, name in sorted(cited):
        module = importlib.import_module(path.replace("/", "."))
        assert hasattr(module, name), f"docs/tour.md cites {path}.py:{name}, which does not exist"


def test_readme_links_the_tour():
    head = (ROOT / "README.md").read_text().split("## ")[0]
    assert "docs/tour.md" in head
