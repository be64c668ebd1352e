"""The documentation runs: every ```python block of README.md and of the pages under docs/ is executed (one test per
block, id ``file:line``), the README stays a front page, and nothing points to documents outside the repository.

Each block runs in a fresh namespace with a temporary directory as the working directory, exactly as written.
A block that needs an optional extra (torch, mpi4py, matplotlib, jax) is skipped with a reason when the extra is
not installed. A block that uses ``fastbp.distributed`` is a script: it runs under 2 MPI ranks (``mpiexec -n 2
python -m mpi4py``), bounded in time. Blocks in ```text, ```bash or ```console are not Python and are not run.
"""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 200
MPI_RANKS = 2
MPI_TIMEOUT = 180  # s for one mpiexec run of a documentation script; they take a few seconds

#: Names used in a block (imported modules, or dotted names it touches) -> the module of the extra it needs.
EXTRAS = {
    "torch": "torch",
    "fastbp.torch": "torch",
    "mpi4py": "mpi4py",
    "fastbp.distributed": "mpi4py",
    "matplotlib": "matplotlib",
    "fastbp.plot": "matplotlib",
    "diagnose.plot": "matplotlib",
    "jax": "jax",
}

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def _pages():
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def code_blocks(path, language="python"):
    """The fenced code blocks of a Markdown file in ``language``: a list of (line of the opening fence, source)."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        if lang == language:
            blocks.append((start, "\n".join(body) + "\n"))
    return blocks


def _block_params():
    params = []
    for path in _pages():
        name = path.relative_to(ROOT).as_posix()
        for line, source in code_blocks(path):
            params.append(pytest.param(path, line, source, id=f"{name}:{line}"))
    return params


def _dotted(node):
    """'a.b.c' for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def names_used(source):
    """Modules a block imports and dotted names it uses (``fastbp.plot.training_curves``, ``diagnose.plot``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted:
                names.add(dotted)
    return names


def extras_needed(source):
    """The modules of the optional extras a block needs, sorted."""
    needed = set()
    for name in names_used(source):
        for prefix, module in EXTRAS.items():
            if name == prefix or name.startswith(prefix + "."):
                needed.add(module)
    return sorted(needed)


def _run_under_mpi(path, line, source, tmp_path):
    from fastbp import distributed

    if distributed.mpiexec_path() is None:
        pytest.skip("no mpiexec found (the mpich wheel installs one: python -m pip install -e '.[mpi]')")
    script = tmp_path / "doc_script.py"
    script.write_text(source)
    try:
        proc = distributed.mpirun(
            [sys.executable, "-m", "mpi4py", script.name], n=MPI_RANKS, timeout=MPI_TIMEOUT, cwd=tmp_path
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{path.name}:{line} did not end within {MPI_TIMEOUT} s under mpiexec:\n{err.output}\n{err.stderr}")
    assert proc.returncode == 0, (
        f"{path.name}:{line} failed under mpiexec -n {MPI_RANKS}:\n{proc.stdout}\n{proc.stderr}"
    )


@pytest.mark.parametrize(("path", "line", "source"), _block_params())
def test_code_block_runs(path, line, source, tmp_path, monkeypatch):
    for module in extras_needed(source):
        pytest.importorskip(module, reason=f"the block needs the optional {module} (see the installation notes)")
    monkeypatch.chdir(tmp_path)
    if "mpi4py" in extras_needed(source):
        _run_under_mpi(path, line, source, tmp_path)
        return
    code = compile(source, f"{path.relative_to(ROOT).as_posix()}:{line}", "exec")
    exec(code, {"__name__": "__main__"})


def test_the_documentation_has_python_blocks_and_they_are_found():
    # a guard against a parser that finds nothing, which would make the parametrized test above pass vacuously
    readme = code_blocks(ROOT / "README.md")
    assert len(readme) >= 3
    assert sum(len(code_blocks(p)) for p in _pages()) >= 20
    assert extras_needed("import torch\nimport fastbp.torch") == ["torch"]
    assert extras_needed("import fastbp\nfastbp.plot.training_curves(h, 'x.png')") == ["matplotlib"]
    assert extras_needed("import fastbp.distributed") == ["mpi4py"]
    assert extras_needed("import numpy as np\nimport fastbp") == []


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


#: Pointers to documents that are not in the repository (the project's own pages are docs/design.md,
#: docs/benchmarks.md and docs/background.md). The file names are matched case-sensitively, so docs/design.md
#: does not count.
_OUTSIDE_NAMES = re.compile(r"DESIGN\.md|BENCHMARKS\.md")
_OUTSIDE_WORDS = re.compile(r"lecture notes|\.\./shared|/work/shared|shared/seeds", re.I)


def _project_files():
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    files += sorted((ROOT / "fastbp").rglob("*.py"))
    files += sorted(p for p in DOCS.rglob("*") if p.is_file() and p.suffix in (".md", ".yml", ".py", ".txt"))
    return files


def test_nothing_points_to_documents_outside_the_repository():
    found = []
    for path in _project_files():
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if _OUTSIDE_NAMES.search(text) or _OUTSIDE_WORDS.search(text):
                found.append(f"{path.relative_to(ROOT)}:{number}: {text.strip()}")
    assert not found, "pointers to documents outside the repository:\n" + "\n".join(found)
