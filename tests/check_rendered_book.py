"""Opens every page of a built book in a headless Chromium, offline, and checks what a reader sees (issue 13).

Each page is loaded from ``file://`` with the network shut (no proxy, every host name unresolvable), MathJax
is given a budget of virtual time to typeset, and the DOM as rendered is read back. A page fails on

- a formula left as TeX: a math element (class ``math``) with no ``mjx-container`` inside, or ``\\(``,
  ``\\[``, ``$$``, ``\\begin{`` left in running text (outside code, scripts and typeset math);
- a MathJax error: an ``mjx-merror`` node, a ``data-mjx-error`` attribute, an undefined macro (MathJax shows
  its name in red), or the text "Math input error";
- a broken proof box: a sphinx-proof admonition (class ``proof``: theorem, lemma, definition, proof, ...)
  whose text outside typeset math still holds TeX (a delimiter, ``$``, or a command such as ``\\alpha``).

Pages print one line each, then a total per page kind (the folder under ``book/``) and overall.
Without a browser (``CHROMIUM`` unset and none of :data:`BROWSERS` on the PATH) the check prints SKIP and
exits 0: CI machines may have none, so it is not part of ``make test``; run it with ``make rendered-check``.

    python tests/check_rendered_book.py _build/html [--budget-ms 30000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\\end\{")
TEX_IN_PROOF = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$|\\[A-Za-z]{2,}|\\begin\{")
MATH_ERROR_TEXT = "Math input error"
OPAQUE_TAGS = {"script", "style", "code", "pre", "kbd", "samp", "textarea", "title", "math", "svg"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
OFFLINE_FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
                 "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND", "--allow-file-access-from-files")


@dataclass
class PageReport:
    """What a reader sees on one rendered page."""

    name: str
    formulas: int = 0
    rendered: int = 0
    proof_boxes: int = 0
    unrendered: list[str] = field(default_factory=list)
    math_errors: list[str] = field(default_factory=list)
    raw_text: list[str] = field(default_factory=list)
    broken_proofs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The page's part of the book: ``theory``, ``llm``, ... (``book`` for the introduction, ``site`` else)."""
        parts = Path(self.name).parts
        return (parts[1] if len(parts) > 2 else "book") if parts[0] == "book" else "site"

    def problems(self) -> list[str]:
        """One line per problem (empty when the page is fine)."""
        return ([f"{self.name}: formula not rendered: {text!r}" for text in self.unrendered]
                + [f"{self.name}: MathJax error: {text!r}" for text in self.math_errors]
                + [f"{self.name}: TeX left in the text: {text!r}" for text in self.raw_text]
                + [f"{self.name}: proof box {box} shows raw TeX: {text!r}" for box, text in self.broken_proofs])

    def summary(self) -> str:
        verdict = "ok" if not self.problems() else "FAIL"
        return (f"{self.name}: {self.rendered}/{self.formulas} formulas rendered, {len(self.math_errors)} MathJax "
                f"errors, {len(self.raw_text)} raw TeX in text, {len(self.broken_proofs)} of {self.proof_boxes} "
                f"proof boxes with raw TeX: {verdict}")


def _short(text: str) -> str:
    return " ".join(text.split())[:120]


class _RenderedDom(HTMLParser):
    """Walks a rendered DOM once, tracking the math element, proof box and opaque element each text lies in."""

    def __init__(self, report: PageReport):
        super().__init__(convert_charrefs=True)
        self.report = report
        self.stack: list[tuple[bool, int | None, str | None]] = []   # (opaque, math element, proof box)
        self.math_text: dict[int, list[str]] = {}
        self.math_rendered: set[int] = set()
        self.undefined_macro = False   # inside MathJax's red <mtext> for a macro it does not know

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "mjx-merror" or ("data-mjx-error" in attributes and tag != "merror"):  # merror: MathML copy
            self.report.math_errors.append(attributes.get("data-mjx-error") or tag)
        self.undefined_macro = tag == "mtext" and attributes.get("mathcolor") == "red"
        if tag in VOID_TAGS:
            return
        opaque, math, proof = self.stack[-1] if self.stack else (False, None, None)
        classes = (attributes.get("class") or "").split()
        if tag == "mjx-container" and math is not None:
            self.math_rendered.add(math)
        if "math" in classes and math is None:
            math = self.report.formulas
            self.report.formulas += 1
            self.math_text[math] = []
        if "proof" in classes and proof is None:
            self.report.proof_boxes += 1
            proof = attributes.get("id") or f"#{self.report.proof_boxes}"
        opaque = opaque or tag in OPAQUE_TAGS or tag.startswith("mjx-")
        self.stack.append((opaque, math, proof))

    def handle_endtag(self, tag):
        if tag not in VOID_TAGS and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.undefined_macro and data.startswith("\\"):
            self.report.math_errors.append(f"undefined macro {data}")
        self.undefined_macro = False
        opaque, math, proof = self.stack[-1] if self.stack else (False, None, None)
        if opaque:
            return
        if MATH_ERROR_TEXT in data:
            self.report.math_errors.append(_short(data))
        if math is not None:
            self.math_text[math].append(data)
            return
        if RAW_TEX.search(data):
            self.report.raw_text.append(_short(data))
        if proof is not None and TEX_IN_PROOF.search(data):
            self.report.broken_proofs.append((proof, _short(data)))

    def finish(self) -> PageReport:
        self.close()
        self.report.rendered = len(self.math_rendered)
        for math, pieces in self.math_text.items():
            if math not in self.math_rendered:
                self.report.unrendered.append(_short("".join(pieces)))
        return self.report


def analyse_rendered_page(html: str, name: str = "page") -> PageReport:
    """Reads a DOM as the browser rendered it (``chromium --dump-dom``) into a :class:`PageReport`."""
    parser = _RenderedDom(PageReport(name))
    parser.feed(html)
    return parser.finish()


def find_browser() -> str | None:
    """The Chromium to use: ``$CHROMIUM`` if set, else the first of :data:`BROWSERS` on the PATH, else None."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def book_pages(html_folder: Path) -> list[Path]:
    """Every HTML page of a built book (not the copied sources, static files or execution reports)."""
    return [page for page in sorted(html_folder.rglob("*.html"))
            if not {"_static", "_sources", "reports"} & set(page.relative_to(html_folder).parts)]


def render(browser: str, page: Path, profile: str, budget_ms: int, timeout_s: float) -> str:
    """The page's DOM after ``budget_ms`` of virtual time in a headless browser with no network."""
    command = [browser, *OFFLINE_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
               "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{browser} exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def check_book(html_folder: Path, browser: str, budget_ms: int = 30000, timeout_s: float = 180.0
               ) -> list[PageReport]:
    """Renders and analyses every page, printing one summary line per page as it goes."""
    reports = []
    with tempfile.TemporaryDirectory(prefix="rendered-check-") as profile:
        for page in book_pages(html_folder):
            name = page.relative_to(html_folder).as_posix()
            try:
                report = analyse_rendered_page(render(browser, page, profile, budget_ms, timeout_s), name)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                report = PageReport(name, math_errors=[f"the browser did not render the page: {error}"])
            print(report.summary(), flush=True)
            reports.append(report)
    return reports


def totals(reports: list[PageReport]) -> list[str]:
    """Summary lines: one per page kind, then all pages."""
    groups: dict[str, list[PageReport]] = defaultdict(list)
    for report in reports:
        groups[report.kind].append(report)
    lines = []
    for kind, group in sorted(groups.items()) + [("all", reports)]:
        failing = sum(bool(r.problems()) for r in group)
        lines.append(f"{kind}: {len(group)} pages, {sum(r.rendered for r in group)}/{sum(r.formulas for r in group)} "
                     f"formulas rendered, {sum(len(r.math_errors) for r in group)} MathJax errors, "
                     f"{sum(len(r.raw_text) for r in group)} raw TeX in text, "
                     f"{sum(len(r.broken_proofs) for r in group)} raw TeX in {sum(r.proof_boxes for r in group)} "
                     f"proof boxes; {failing} pages fail")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_folder", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--budget-ms", type=int, default=30000,
                        help="virtual time MathJax gets to typeset each page (default 30000)")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"SKIP: no headless browser found (set CHROMIUM, or install one of {', '.join(BROWSERS)}); "
              "the rendered book was not checked")
        return 0
    if not book_pages(args.html_folder):
        print(f"no HTML pages under {args.html_folder}: build the book first (make book)")
        return 1
    reports = check_book(args.html_folder, browser, args.budget_ms)
    print("\n".join(totals(reports)))
    found = [line for report in reports for line in report.problems()]
    print("\n".join(found) or "rendered book: every formula typeset, no MathJax error, no raw TeX in proof boxes")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
