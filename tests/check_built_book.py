"""Checks of the built HTML book that a reader would otherwise find by eye (run by `make book`).

- Every page loads MathJax from the built site (``_static/mathjax``), never from a network address, so formulas
  render offline.
- No TeX is left in running text: a ``$`` or ``\\(``/``\\[`` outside the math elements MathJax typesets means a
  formula the parser did not recognise (such as a ``$$`` block glued to a line of text inside a proof box).

    python tests/check_built_book.py _build/html
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

RAW_TEX = re.compile(r"\$|\\\(|\\\[")
SKIPPED_TAGS = {"script", "style", "code", "pre", "kbd", "samp", "textarea", "title"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _TextOutsideMath(HTMLParser):
    """Collects running text outside math, code and cell outputs (outputs are data, e.g. a token ``'$'``)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[bool] = []
        self.stray: list[str] = []
        self.mathjax_sources: list[str] = []
        self.math_elements = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and "mathjax" in (attributes.get("src") or "").lower():
            self.mathjax_sources.append(attributes["src"])
        if tag in VOID_TAGS:
            return
        classes = (attributes.get("class") or "").split()
        opaque = (tag in SKIPPED_TAGS or "math" in classes or "cell_output" in classes or "output" in classes
                  or tag.startswith("mjx-"))
        self.math_elements += "math" in classes
        self.stack.append(opaque or (bool(self.stack) and self.stack[-1]))

    def handle_endtag(self, tag):
        if tag not in VOID_TAGS and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not (self.stack and self.stack[-1]) and RAW_TEX.search(data):
            self.stray.append(" ".join(data.split())[:120])


def problems(html_folder: str | Path) -> list[str]:
    """Every problem found in the built book, one line each (empty when the book is fine)."""
    folder = Path(html_folder)
    pages = [page for page in sorted(folder.rglob("*.html"))
             if not {"_static", "_sources", "reports"} & set(page.relative_to(folder).parts)]
    if not pages:
        return [f"no HTML pages under {folder}: build the book first (make book)."]
    found = []
    for page in pages:
        parser = _TextOutsideMath()
        parser.feed(page.read_text(encoding="utf-8"))
        name = page.relative_to(folder)
        remote = [src for src in parser.mathjax_sources if "://" in src]
        if remote:
            found.append(f"{name}: MathJax loads from the network ({remote[0]}); formulas will not render offline")
        if parser.math_elements and not any("_static/mathjax/" in src for src in parser.mathjax_sources):
            found.append(f"{name}: has formulas but does not load MathJax from _static/mathjax")
        found += [f"{name}: TeX left in the text: {text!r}" for text in parser.stray]
    return found


if __name__ == "__main__":
    found = problems(sys.argv[1] if len(sys.argv) > 1 else "_build/html")
    print("\n".join(found) or "built book: formulas load MathJax locally, no TeX left in the text")
    sys.exit(1 if found else 0)
