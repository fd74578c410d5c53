"""The documentation works as written: every Python block of README.md and docs/*.md runs, and
every relative link between them resolves.

Each ```python block runs as a script of its own, in a fresh temporary folder, with this
interpreter, and must exit with status 0. HTML comment lines right above a block say more:

- ``<!-- run with: mpiexec -n 2 python -->``: launch it so. The first word is a program next
  to this interpreter (the venv's ``mpiexec`` or ``torchrun``), ``python`` is this
  interpreter, and the script's path comes last.
- ``<!-- expect: TEXT -->``: TEXT must appear in what the block prints.
- ``<!-- same as: tests/resume_example.py -->``: the block is that file's code after its
  docstring, so that the README's example and the file other tests run cannot drift apart.

A block that is not meant to run alone is a ```text or ```sh block. Every fence names its
language, so that no Python block escapes this test as an untagged one.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: The languages a fence may name; only ``python`` runs.
LANGUAGES = {"python", "sh", "text"}
#: Seconds a block may take (its launcher and every process it starts included).
TIMEOUT = 180

_FENCE = re.compile(r"^(\s*)```(.*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*([a-z ]+):\s*(.*?)\s*-->\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # images too: ![alt](file)


@dataclass
class Block:
    """One fenced code block: where it is, its language, its text and its directives."""

    path: Path
    line: int
    language: str
    text: str
    directives: dict[str, list[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of the Markdown file ``path``, in order.

    Raises
    ------
    ValueError
        For a fence that is never closed.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.group(1), opening.group(2).strip()
        directives: dict[str, list[str]] = {}
        above = i - 1
        while above >= 0 and _DIRECTIVE.match(lines[above]):
            key, value = _DIRECTIVE.match(lines[above]).groups()
            directives.setdefault(key.strip(), []).insert(0, value)
            above -= 1
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            # A fence inside a list item is indented: take the indent off its lines.
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{i}: a code block is never closed")
        found.append(Block(path, i - len(body), language, "\n".join(body) + "\n", directives))
        i += 1
    return found


ALL_BLOCKS = [block for path in DOCUMENTS for block in blocks_of(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]


def launcher(words: list[str]) -> list[str]:
    """The command of a ``run with:`` directive: its program from this interpreter's folder,
    ``python`` as this interpreter."""
    program = Path(sys.executable).parent / words[0]
    assert program.exists(), f"{words[0]} is not installed next to {sys.executable}"
    return [str(program)] + [sys.executable if word == "python" else word for word in words[1:]]


def run_block(block: Block, folder: Path) -> str:
    """Run ``block`` in ``folder`` as its directives say; fail unless it exits with 0 and
    prints what it is expected to. Returns its standard output."""
    script = folder / "block.py"
    script.write_text(block.text, encoding="utf-8")
    command = [sys.executable]
    for words in block.directives.get("run with", []):
        command = launcher(words.split())
    command.append(str(script))
    env = {
        **os.environ,
        # The same adamax_rs as this test run, wherever it was imported from; not the tests'
        # own helpers, which a reader does not have.
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if Path(p or ".").resolve() != HERE),
        # MPICH starts every rank on this machine by fork: no ssh, no host names to resolve.
        "HYDRA_LAUNCHER": "fork",
    }
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a hang is killed with every rank
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{block.name} did not finish in {TIMEOUT} s:\n{out[-2000:]}\n{err[-4000:]}")
    if process.returncode != 0:
        pytest.fail(f"{block.name} exited with {process.returncode}:\n{out[-2000:]}\n{err[-4000:]}")
    for text in block.directives.get("expect", []):
        if text not in out:
            pytest.fail(f"{block.name} did not print {text!r}; it printed:\n{out[-3000:]}")
    if "print(" in block.text and not out.strip():
        pytest.fail(f"{block.name} prints, but its output is empty")
    return out


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.name)
def test_every_python_block_runs_as_written(block, tmp_path):
    run_block(block, tmp_path)


def code_after_docstring(path: Path) -> str:
    """The source of ``path`` after its module docstring, without the blank lines around."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    first = tree.body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant), path
    assert first.end_lineno is not None
    return "\n".join(source.splitlines()[first.end_lineno :]).strip() + "\n"


COPIES = [block for block in ALL_BLOCKS if "same as" in block.directives]


@pytest.mark.parametrize("block", COPIES, ids=lambda block: block.name)
def test_copied_examples_are_the_files_they_copy(block):
    (source,) = block.directives["same as"]
    assert block.text.strip() + "\n" == code_after_docstring(ROOT / source), (
        f"{block.name} differs from {source}: change both"
    )


def test_the_readme_shows_the_resume_example_that_the_kill_test_runs():
    assert any(b.directives.get("same as") == ["tests/resume_example.py"] for b in COPIES)


def test_every_fence_names_a_known_language():
    unknown = [(b.name, b.language) for b in ALL_BLOCKS if b.language not in LANGUAGES]
    assert not unknown, f"name one of {sorted(LANGUAGES)} after the opening ```: {unknown}"


def test_every_directive_is_known_and_on_a_python_block():
    known = {"run with", "expect", "same as"}
    for block in ALL_BLOCKS:
        assert set(block.directives) <= known, (block.name, block.directives)
        if block.directives:
            assert block.language == "python", f"{block.name}: directives on a non-Python block"


def test_launched_blocks_name_a_launcher():
    for block in PYTHON_BLOCKS:
        for words in block.directives.get("run with", []):
            assert words.split()[0] in ("mpiexec", "torchrun"), (block.name, words)


# -- the test's own checks can fail ----------------------------------------------------------


def fake_block(text: str, **directives: list[str]) -> Block:
    return Block(ROOT / "README.md", 0, "python", text, dict(directives))


@pytest.mark.parametrize(
    "block",
    [
        fake_block("raise ValueError('a block that fails')\n"),
        fake_block("import sys\nsys.exit(3)\n"),
        fake_block("print('something else')\n", expect=["loss"]),
        fake_block("print(end='')\n"),
        fake_block("import reference\n"),
    ],
    ids=["raises", "exits non-zero", "prints other text", "prints nothing", "uses test helpers"],
)
def test_a_block_that_fails_fails_the_test(block, tmp_path):
    with pytest.raises(pytest.fail.Exception):
        run_block(block, tmp_path)


def test_a_block_runs_in_a_fresh_folder_and_its_output_comes_back(tmp_path):
    block = fake_block("import os\nprint(sorted(os.listdir('.')))\n", expect=["['block.py']"])
    assert run_block(block, tmp_path).strip() == "['block.py']"


def test_directives_and_fences_are_read(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- expect: 2 -->\n<!-- run with: mpiexec -n 2 python -->\n```python\nprint(2)\n```\n"
        "\n- item\n\n  ```sh\n  make test\n  ```\n",
        encoding="utf-8",
    )
    first, second = blocks_of(page)
    assert (first.language, first.text, first.line) == ("python", "print(2)\n", 3)
    assert first.directives == {"expect": ["2"], "run with": ["mpiexec -n 2 python"]}
    assert (second.language, second.text, second.directives) == ("sh", "make test\n", {})
    page.write_text("```python\nprint(1)\n", encoding="utf-8")
    with pytest.raises(ValueError, match="never closed"):
        blocks_of(page)


# -- links -----------------------------------------------------------------------------------


def anchor_of(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_in(path: Path) -> set[str]:
    """The anchors of the headings of ``path`` (outside code blocks)."""
    anchors = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(anchor_of(line.lstrip("#")))
    return anchors


def relative_links(path: Path) -> list[str]:
    """The targets of the Markdown links of ``path`` that point into this repository."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code is not links
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` to a file that does not exist, or to a heading that a
    linked Markdown file does not have."""
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors_in(linked):
            broken.append(target)
    return broken


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(ROOT)}: links that lead nowhere: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for target in relative_links(DOCUMENTS[0])
    }
    missing = [p.name for p in DOCUMENTS[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages a README reader cannot find: {missing}"


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("## A `code` heading, with *marks*\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n[a](missing.md) [b](#title) [c](#nowhere) [d](https://x.y)\n"
        "[e](other.md#a-code-heading-with-marks) [f](other.md#title) ![g](img.png)\n"
        "```text\n[h](not-a-link.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.md", "#nowhere", "other.md#title", "img.png"]
    assert anchor_of(" `step()` and *state*: numbers, 2.0 ") == "step-and-state-numbers-20"
