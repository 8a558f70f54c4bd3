"""Everything we ship speaks for itself: no text refers to files or sections that are not in the repository.

Scanned: README.md, pyproject.toml, docs/**, src/** (docstrings, comments, help strings), scripts/*, benchmarks/*.py,
and the `--help` output of every `diffspace` command and sub-command (plus `generate --sampler list`).
Checked: (1) no reference to material outside the repository (a `../shared` folder, an algorithm "spec" and its
sections, `papers.md`, equations of some other README); (2) every relative markdown link resolves; (3) every
repository path named in the text (`docs/…`, `benchmarks/…`, `tests/…`, `scripts/…`, `src/…`) exists.
"""

import argparse
import re
from pathlib import Path

import pytest

from diffspace.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]

# Each pattern is a way the text pointed at something not shipped.
FORBIDDEN = [
    r"\.\./shared", r"\bshared/(?:spec|DESIGN)", r"papers\.md", r"DESIGN\.md",
    r"\bspec\s*§", r"\bspec\s+(?:section|experiment|item|\d)", r"\bthe spec(?:'s)?\b", r"\bspec\s*\(§",
    r"\bREADME eq", r"\bauthors' README\b",
]
FORBIDDEN_RE = re.compile("|".join(f"(?:{p})" for p in FORBIDDEN), re.IGNORECASE)
# A repository path: one of our top-level folders, then path characters. A path followed by a template
# character ($P, {seed}, <name>) is a pattern, not a file, and is skipped.
PATH_RE = re.compile(r"(?<![\w./-])((?:docs|benchmarks|tests|scripts|src)/[\w./*-]*)(.?)")
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


def shipped_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    files += sorted((ROOT / "docs").rglob("*"))
    files += sorted((ROOT / "src").rglob("*.py"))
    files += sorted((ROOT / "scripts").glob("*"))
    files += sorted((ROOT / "benchmarks").glob("*.py"))
    files += sorted((ROOT / "benchmarks" / "results").rglob("*.md"))
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


def all_parsers(parser: argparse.ArgumentParser, prefix: str = "diffspace"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, f"{prefix} {name}")


def offences(text: str) -> list[str]:
    return [m.group(0) for m in FORBIDDEN_RE.finditer(text)]


def missing_paths(text: str) -> list[str]:
    bad = []
    for m in PATH_RE.finditer(text):
        path, after = m.group(1).rstrip(".,:;"), m.group(2)
        if after in ("$", "{", "<") or path.endswith("/") and after == "*":
            continue
        if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
            bad.append(path)
    return bad


def test_forbidden_patterns_are_caught():
    # The checks themselves: each kind of reference we removed is found, ordinary uses of "spec" are not.
    for text in ["see ../shared/spec/papers.md §2.8", "(spec §1.6, §1.7)", "As the spec predicts",
                 "spec experiment 12", "the authors' README eq. (5)", "(spec section 1.6)", "(spec 1.6)"]:
        assert offences(text), text
    for text in ["spec = importlib.util.find_spec('x')", "open_dataset(spec)", "a dataset spec string"]:
        assert not offences(text), text
    assert missing_paths("see `docs/no-such-file.md` and docs/samplers.md") == ["docs/no-such-file.md"]
    assert missing_paths("--outdir benchmarks/results/converge_variants_$P and benchmarks/*.py") == []


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_file_is_self_contained(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    assert not offences(text), f"{path.relative_to(ROOT)} refers to unshipped material: {offences(text)}"
    assert not missing_paths(text), f"{path.relative_to(ROOT)} names paths that do not exist: {missing_paths(text)}"
    if path.suffix == ".md":
        for target in LINK_RE.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            assert (path.parent / target.split("#")[0]).exists(), f"{path.relative_to(ROOT)}: broken link {target}"


def test_every_command_help_is_self_contained(capsys):
    parsers = dict(all_parsers(build_parser()))
    assert {f"diffspace {name}" for name in COMMANDS} <= set(parsers)
    for name in COMMANDS:  # what a user actually types
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: diffspace {name}")
        assert not offences(out) and not missing_paths(out), (name, offences(out), missing_paths(out))
    for prog, parser in parsers.items():  # sub-commands too (fid ref, fid calc, features train, ...)
        text = parser.format_help()
        assert not offences(text) and not missing_paths(text), (prog, offences(text), missing_paths(text))


def test_sampler_list_is_self_contained(capsys):
    assert main(["generate", "--sampler", "list"]) == 0
    out = capsys.readouterr().out
    assert "dpmpp_2m" in out
    assert not offences(out), offences(out)
