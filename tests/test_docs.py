"""The README stays a true reference: its `train` synopsis is the option table's, it stays short,
and it points only inside the repository."""

import re
from pathlib import Path

from squeezenet.config import usage

ROOT = Path(__file__).resolve().parents[1]


def test_readme_train_synopsis_is_generated_from_the_option_table():
    assert usage() in (ROOT / "README.md").read_text(), "regenerate it: python -c 'from squeezenet.config " \
                                                         "import usage; print(usage())'"


def test_readme_is_a_reference_not_a_log():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12_500
    assert "../shared" not in text and not re.search(r"\bstops? \d+\b", text)
    for link in re.findall(r"\]\(((?!https?:)[^)#]+)", text):  # every relative link resolves
        assert (ROOT / link).exists(), link


def test_no_development_history_in_the_repository():
    """Comments and docs say what and why; histories live in RESULTS.md as dated runs, not as work sessions."""
    tracked = [p for d in ("src", "tests", "benchmarks", "docs", "web", ".ci") for p in (ROOT / d).rglob("*")
               if p.is_file() and p.suffix in (".py", ".md", ".sh", ".js", ".mjs", ".html", ".toml", "")
               and not {"node_modules", "results", "__pycache__"} & set(p.parts) and ".egg-info" not in str(p)]
    offenders = [str(p.relative_to(ROOT)) for p in [*tracked, ROOT / "README.md", ROOT / "Makefile"]
                 if re.search(r"\bstops? \d+\b", p.read_text(errors="replace"))]
    assert not offenders, offenders
