"""The documents: figures as their JSON gives them, and links that lead somewhere.

Every table between `<!-- figures:NAME -->` markers must be what
tools/docfigures makes from the committed JSON (a figure typed by hand, or
JSON changed without re-rendering, fails here), and every relative link and
#anchor in every Markdown file of the checkout must resolve.
"""

import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCFIGURES = ROOT / "tools" / "docfigures"
SKIP_DIRS = {".git", "out", "bin", "node_modules", "__pycache__"}


def docfigures(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOCFIGURES), *args], capture_output=True, text=True)


def test_figures_match_their_json():
    r = docfigures("--check")
    assert r.returncode == 0, r.stderr


def test_figures_check_finds_a_table_typed_by_hand(tmp_path):
    (tmp_path / "models" / "default").mkdir(parents=True)
    shutil.copy(ROOT / "models" / "default" / "model.json", tmp_path / "models" / "default")
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "X.md"
    doc.write_text("# X\n\n<!-- figures:accuracy -->\n| typed | by hand |\n<!-- /figures:accuracy -->\n")
    assert docfigures("--check", "--root", str(tmp_path)).returncode == 1
    assert docfigures("--root", str(tmp_path)).returncode == 0
    assert "image AUROC" in doc.read_text() and "typed" not in doc.read_text()
    assert docfigures("--check", "--root", str(tmp_path)).returncode == 0


def test_bench_block_says_when_no_bench_is_recorded(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("<!-- figures:bench -->\n<!-- /figures:bench -->\n")
    assert docfigures("--root", str(tmp_path)).returncode == 0
    assert "`make bench` has not been recorded" in doc.read_text()


# ---- links ------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case,
    punctuation removed but for - and _, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return "".join(c if c in "-_ " or unicodedata.category(c)[0] in "LN" else "" for c in text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set(HTML_ID.findall(text))
    for _, title in HEADING.findall(FENCE.sub("", text)):
        s = slug(title)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(text: str) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    return INLINE_LINK.findall(text) + REF_DEF.findall(text)


def broken_links(doc: Path, root: Path) -> list[str]:
    bad = []
    for target in links(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no {dest.relative_to(root) if dest.is_relative_to(root) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return bad


def markdown_files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # build outputs and git are not documents
        found += [Path(folder) / f for f in files if f.endswith(".md")]
    return sorted(found)


def test_slug_is_githubs():
    assert slug("An hour under faults (`make soak`)") == "an-hour-under-faults-make-soak"
    assert slug("HTTP: metrics and health") == "http-metrics-and-health"
    assert slug("Drift warnings: what a technician does") == "drift-warnings-what-a-technician-does"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / "b.md").write_text("# Here\n")
    doc = tmp_path / "a.md"
    doc.write_text("[ok](b.md#here) [gone](c.md) [bad anchor](b.md#there) [self](#top) `[code](x.md)`\n"
                   "```\n[fenced](y.md)\n```\n# Top\n[web](https://example.invalid/x)\n")
    assert broken_links(doc, tmp_path) == ["c.md: no c.md", "b.md#there: no heading #there in b.md"]


def test_every_markdown_link_resolves():
    docs = markdown_files(ROOT)
    assert ROOT / "README.md" in docs
    bad = [f"{d.relative_to(ROOT)}: {b}" for d in docs for b in broken_links(d, ROOT)]
    assert not bad, "broken links:\n" + "\n".join(bad)
