"""The README's table of the 37 details points at real code: every `file:name` it names exists
and carries the row's tag (e.g. ``[core 7]``) in its source."""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {"envs/": "envs/", "": "rlkit/"}  # `envs/x.py` lives in envs/, `ppo.py` in rlkit/
TAG = re.compile(r"\[(core|atari|cont|lstm|multidiscrete) ([\d,\s\-]+)\]")


def detail_rows() -> list[tuple[str, list[str]]]:
    """(tag, [file:name, ...]) of each row of the table under '## The 37 implementation details'."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## The 37 implementation details", 1)[1].split("\nBeyond the 37", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and TAG.fullmatch(f"[{cells[0]}]"):
            rows.append((cells[0], re.findall(r"`([\w/]+\.py):([\w.]+)", cells[2])))
    return rows


def tags_in(source: str) -> set[str]:
    """Every tag a source text carries, ranges and lists expanded: [atari 1-7] -> atari 1 ... atari 7."""
    found = set()
    for kind, numbers in TAG.findall(source):
        for part in numbers.split(","):
            low, _, high = part.strip().partition("-")
            found.update(f"{kind} {n}" for n in range(int(low), int(high or low) + 1))
    return found


def source_of(path: str, dotted: str) -> str:
    tree_path = os.path.join(ROOT, "envs" if path.startswith("envs/") else "rlkit", path.removeprefix("envs/"))
    source = open(tree_path).read()
    node: ast.AST = ast.parse(source)
    for name in dotted.split("."):
        matches = [n for n in ast.iter_child_nodes(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
        assert matches, f"README names {path}:{dotted}, but {path} has no {name}"
        node = matches[0]
    return "\n".join(source.splitlines()[node.lineno - 1 : node.end_lineno])  # whole lines: trailing comments too


def test_the_table_has_all_37_details():
    tags = [tag for tag, _ in detail_rows()]
    assert len(tags) == 37 and len(set(tags)) == 37, tags


def test_every_function_the_table_names_exists_and_carries_the_rows_tag():
    problems = []
    for tag, references in detail_rows():
        assert references, f"row {tag} names no code"
        for path, name in references:
            if tag not in tags_in(source_of(path, name)):
                problems.append(f"{tag}: {path}:{name} does not carry [{tag}]")
    assert not problems, "\n".join(problems)
