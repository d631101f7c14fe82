"""Check tables: every chapter ends by holding its claims against the numbers it measured.

A row states a claim, the measured value, what was expected (a value within a tolerance, a bound, or a
criterion in words) and whether the claim held. :meth:`CheckTable.show` displays the table three ways at once:
an HTML table for the rendered book (long claims wrap, failed rows stand out), a fixed-width text table for
terminals, and a machine-readable record (MIME type :data:`RECORD_MIME`) that the regression compares.

The regression (``make test``, nbval over the executed reference notebooks; see ``conftest.py`` at the
repository root) compares a rerun's record with the stored one by :func:`compare_records`:

- the title, each claim, each criterion in words and each pass/fail verdict must be equal;
- each measured number (and each expected number, when it is itself measured) must agree within the row's
  *reproducibility* ``|fresh - stored| <= atol + rtol·|stored|`` (``numpy.isclose``'s rule).

How to choose the reproducibility of a row: the default ``rtol = 1e-3`` suits an ordinary quantity computed in
float32 (it moves by about 1e-6 relative between CPUs, thread counts or fp32 GPUs, and a 1 % change in a formula
still fails). A value that is itself rounding noise (an error of 1e-15 in float64, a KL divergence of 1e-6 between
nearly equal float32 distributions) or a difference of nearly equal numbers carries no information in its digits:
give it an ``atol`` at the noise level of the computation (for errors, well below the row's own pass tolerance),
or a larger ``rtol`` for a small ratio computed from noisy terms. Counts and shares are compared exactly unless a
row says otherwise (a flip of one token is a real change).

Example:
    >>> checks = CheckTable("Theorem 3.8")
    >>> checks.add("ΔCE''(0) equals the coefficient", measured=0.1234567, expected=0.1234568, tolerance=1e-6)
    True
    >>> checks.add("share of curves that bump", 0.75, ">", 0.5, note="most bump")
    True
    >>> checks.add("max |closed form - direct sum|", 3e-16, expected=0.0, tolerance=1e-9, atol=1e-12)
    True
    >>> checks.show()  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import operator
import os
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np

RECORD_MIME = "application/vnd.steerlib.checks+json"
"""MIME type of the machine-readable check record inside a check cell's output."""

DEFAULT_RTOL = 1e-3
"""Relative reproducibility of a measured value (see the module docstring for how to choose another)."""

RELATIONS = {"=": None, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
"""How a measured value is held against an expected one: within a tolerance (``"="``) or a bound."""


def format_number(value, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits (``-0`` printed as ``0``); non-numbers as ``str``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return str(value)
    text = f"{float(value):.{digits}g}"
    return "0" if text in ("-0", "-0.0") else text


def _plain(value):
    """A JSON-ready form of a measured or expected value: bool, int, float, str or None (non-finite as str)."""
    if value is None or isinstance(value, (str, bool, np.bool_)):
        return value if not isinstance(value, np.bool_) else bool(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    return str(value)


@dataclass
class Check:
    """One claim with what was measured, what was expected and whether it held.

    Args:
        claim: the claim in words.
        measured: the measured value (a number, or a word such as a token).
        relation: ``"="`` (``|measured - expected| <= tolerance``), ``">"``, ``">="``, ``"<"``, ``"<="``
            (a bound), or ``""`` (a criterion in words, ``expected``, judged by the caller).
        expected: the expected value, bound, or criterion in words.
        tolerance: the pass tolerance of ``"="`` rows.
        passed: whether the claim held.
        note: a few words shown after the expectation (e.g. what the paper reports).
        rtol, atol: the reproducibility of the numbers of this row in the regression (module docstring).
    """

    claim: str
    measured: float | int | str | None
    relation: str
    expected: float | int | str | None
    tolerance: float | None
    passed: bool
    note: str = ""
    rtol: float = DEFAULT_RTOL
    atol: float = 0.0

    def expected_text(self, digits: int) -> str:
        """The expectation as shown: ``0.5 ± 0.1``, ``> 0.5``, or the criterion in words; then the note."""
        if self.relation == "":
            text = str(self.expected)
        elif self.relation == "=":
            text = format_number(self.expected, digits)
            if self.tolerance:
                text += f" ± {format_number(self.tolerance, 2)}"
        else:
            text = f"{self.relation} {format_number(self.expected, digits)}"
        return f"{text} ({self.note})" if self.note else text


@dataclass
class CheckTable:
    """A titled list of :class:`Check` rows, displayed as HTML, as text and as a record for the regression.

    Args:
        title: what is being checked, e.g. ``"Theorem 3.3 on the Eq. (2) dataset"``.
        digits: significant digits of displayed numbers (display only: the record keeps full precision).
    """

    title: str
    digits: int = 4
    rows: list[Check] = field(default_factory=list)

    def add(self, claim: str, measured, relation_or_expected=None, expected=None, tolerance: float | None = None,
            passed: bool | None = None, *, note: str = "", rtol: float = DEFAULT_RTOL, atol: float = 0.0) -> bool:
        """Record a claim and return whether it held. Three forms:

        - ``add(claim, measured, expected, tolerance=t)``: holds when ``|measured - expected| <= t``;
        - ``add(claim, measured, ">", bound)`` (or ``">="``, ``"<"``, ``"<="``): holds when the bound does;
        - ``add(claim, measured, "criterion in words", passed=...)``: the caller judges; the words must not
          contain computed numbers (they are compared exactly by the regression: pass the number as a bound).

        ``note`` is shown after the expectation; ``rtol`` and ``atol`` set the regression's reproducibility of
        this row's numbers (module docstring). Keyword ``expected=`` works for the first form too.
        """
        if isinstance(relation_or_expected, str) and relation_or_expected in RELATIONS and expected is not None:
            relation = relation_or_expected
            if relation == "=" and tolerance is None:
                raise ValueError(f"{claim!r}: an '=' check needs a tolerance")
        elif expected is None and not isinstance(relation_or_expected, str):
            relation, expected = "=", relation_or_expected
        elif expected is None and isinstance(relation_or_expected, str):
            relation, expected = "", relation_or_expected
        else:
            raise ValueError(f"{claim!r}: give (expected, tolerance=), (relation, bound) or ('criterion', passed=)")
        if relation == "=":
            if tolerance is None:
                if passed is None:
                    raise ValueError(f"{claim!r}: give either a tolerance (numeric check) or passed= (criterion)")
            elif passed is None:
                passed = abs(float(measured) - float(expected)) <= tolerance
        elif relation == "":
            if passed is None:
                raise ValueError(f"{claim!r}: a criterion in words needs passed=")
        else:
            if passed is not None:
                raise ValueError(f"{claim!r}: a bound decides the verdict itself; do not pass passed=")
            passed = RELATIONS[relation](float(measured), float(expected))
        self.rows.append(Check(claim, _plain(measured), relation, _plain(expected),
                               None if tolerance is None else float(tolerance), bool(passed), note,
                               float(rtol), float(atol)))
        return bool(passed)

    def record(self) -> dict:
        """The machine-readable table: title and rows with full-precision numbers and their reproducibility."""
        return {"title": self.title, "rows": [asdict(row) for row in self.rows]}

    def render(self) -> str:
        """The table as fixed-width text, with a last line counting the checks that pass."""
        header = ("claim", "measured", "expected", "pass")
        cells = [header] + [(r.claim, format_number(r.measured, self.digits), r.expected_text(self.digits),
                             "yes" if r.passed else "NO") for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(4)]
        lines = [self.title, "  ".join("-" * w for w in widths)]
        for i, row in enumerate(cells):
            lines.append("  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        return f"{sum(r.passed for r in self.rows)}/{len(self.rows)} checks pass"

    def render_html(self) -> str:
        """The table as HTML that fits its box: claims wrap, numbers do not, failed rows are tinted red."""
        cell = "padding:0.25em 0.6em;border-bottom:1px solid #ddd;vertical-align:top;"
        head = "".join(f'<th style="{cell}text-align:{align};">{name}</th>'
                       for name, align in (("claim", "left"), ("measured", "right"), ("expected", "left"),
                                           ("pass", "center")))
        body = []
        for r in self.rows:
            tint = "" if r.passed else "background:#fde2e1;"
            verdict = "yes" if r.passed else '<strong style="color:#b00020;">NO</strong>'
            body.append(
                f'<tr style="{tint}">'
                f'<td style="{cell}overflow-wrap:anywhere;">{html.escape(r.claim)}</td>'
                f'<td style="{cell}text-align:right;white-space:nowrap;">'
                f'{html.escape(format_number(r.measured, self.digits))}</td>'
                f'<td style="{cell}overflow-wrap:anywhere;">{html.escape(r.expected_text(self.digits))}</td>'
                f'<td style="{cell}text-align:center;">{verdict}</td></tr>')
        return (f'<table class="steerlib-checks" style="width:100%;table-layout:auto;border-collapse:collapse;'
                f'font-size:0.9em;"><caption style="caption-side:top;text-align:left;font-weight:bold;">'
                f'{html.escape(self.title)}</caption><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
                f'<tfoot><tr><td colspan="4" style="{cell}">{self.summary()}</td></tr></tfoot></table>')

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": self.render(), "text/html": self.render_html(), RECORD_MIME: self.record()}

    def show(self) -> None:
        """Display the table: HTML, text and the record in a notebook; the text table elsewhere."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            display(self)
        else:
            print(self.render())


def _numbers_agree(stored, fresh, rtol: float, atol: float) -> bool:
    if isinstance(stored, (int, float)) and not isinstance(stored, bool) and \
            isinstance(fresh, (int, float)) and not isinstance(fresh, bool):
        return abs(fresh - stored) <= atol + rtol * abs(stored)
    return stored == fresh


def compare_records(stored: dict, fresh: dict) -> list[str]:
    """The differences between a stored check record and a rerun's, as sentences (empty when they agree).

    Titles, claims, relations, criteria in words, notes and verdicts must be equal; measured and expected values
    and pass tolerances, when numbers (an expected value or a tolerance may itself be measured), must agree within
    the fresh row's ``atol + rtol·|stored|``.
    """
    differences = []
    if stored.get("title") != fresh.get("title"):
        differences.append(f"title: stored {stored.get('title')!r}, now {fresh.get('title')!r}")
    stored_rows, fresh_rows = stored.get("rows", []), fresh.get("rows", [])
    if len(stored_rows) != len(fresh_rows):
        differences.append(f"{len(stored_rows)} rows stored, {len(fresh_rows)} now")
    for index, (old, new) in enumerate(zip(stored_rows, fresh_rows), start=1):
        where = f"row {index} ({new['claim']!r})"
        for key in ("claim", "relation", "passed", "note"):
            if old.get(key) != new.get(key):
                differences.append(f"{where}: {key} stored {old.get(key)!r}, now {new.get(key)!r}")
        for key in ("measured", "expected", "tolerance"):
            if not _numbers_agree(old.get(key), new.get(key), new["rtol"], new["atol"]):
                differences.append(f"{where}: {key} stored {old.get(key)!r}, now {new.get(key)!r} "
                                   f"(allowed: atol {new['atol']:g} + rtol {new['rtol']:g}·|stored|)")
    return differences


def notebook_records(notebook) -> list[dict]:
    """The check records (:meth:`CheckTable.record`) in an executed notebook's outputs, in cell order."""
    return [output["data"][RECORD_MIME] for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if RECORD_MIME in output.get("data", {})]


def _number(value) -> float:
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else float("nan")


def record_rows(record: dict) -> list[dict]:
    """One flat row per check of a record: the table's title, the claim, ``measured`` and ``expected`` as numbers
    (NaN for words) and as text, the relation, ``passed``; the form of every table of checks the book gathers."""
    return [{"table": record["title"], "claim": row["claim"], "measured": _number(row["measured"]),
             "measured_text": str(row["measured"]), "relation": row["relation"],
             "expected": _number(row["expected"]), "expected_text": str(row["expected"]),
             "passed": bool(row["passed"])} for row in record["rows"]]


def book_checks(root: str | os.PathLike):
    """Every check row of every chapter of the book at ``root``, read from the executed reference notebooks that
    the regression reproduces (``<chapter>.ipynb`` beside each source listed in ``_toc.yml``): a pandas
    ``DataFrame`` with the chapter's file (``book/llm/mmlu``), its part and title, then :func:`record_rows`'s
    columns. A chapter without checks has no row."""
    import nbformat
    import pandas as pd

    rows = []
    for chapter, part in executed_chapters(root).items():
        notebook = nbformat.read(Path(root) / f"{chapter}.ipynb", as_version=4)
        title = next((line.lstrip("# ").strip() for cell in notebook.cells if cell.cell_type == "markdown"
                      for line in cell.source.splitlines() if line.startswith("# ")), chapter)
        rows += [{"chapter": chapter, "part": part, "title": title, **row}
                 for record in notebook_records(notebook) for row in record_rows(record)]
    return pd.DataFrame(rows)


def executed_chapters(root: str | os.PathLike) -> dict[str, str]:
    """The chapters of ``_toc.yml`` that have an executed reference notebook: file (``book/llm/mmlu``) -> part."""
    import yaml

    toc = yaml.safe_load((Path(root) / "_toc.yml").read_text())
    return {entry["file"]: part.get("caption", "") for part in toc.get("parts", [])
            for entry in part.get("chapters", []) if (Path(root) / f"{entry['file']}.ipynb").exists()}


def scoreboard_html(board, page: str) -> str:
    """:func:`book_checks`'s rows as HTML for the page ``page`` (its file without suffix, e.g.
    ``"book/beyond/scoreboard"``): one summary row per chapter (linked; checks held out of all; the claims that
    did not hold), then each chapter's rows in a folded block, failed rows tinted as in :class:`CheckTable`."""
    import posixpath

    cell = "padding:0.25em 0.6em;border-bottom:1px solid #ddd;vertical-align:top;"
    summary, details = [], []
    for chapter, rows in board.groupby("chapter", sort=False):
        link = posixpath.relpath(chapter, posixpath.dirname(page)) + ".html"
        title = html.escape(rows["title"].iloc[0])
        held, failed = int(rows["passed"].sum()), rows[~rows["passed"]]
        misses = "<br>".join(html.escape(claim) for claim in failed["claim"]) or "—"
        summary.append(f'<tr><td style="{cell}">{html.escape(rows["part"].iloc[0])}</td>'
                       f'<td style="{cell}"><a href="{link}">{title}</a></td>'
                       f'<td style="{cell}text-align:right;white-space:nowrap;">{held} / {len(rows)}</td>'
                       f'<td style="{cell}overflow-wrap:anywhere;">{misses}</td></tr>')
        body = "".join(
            f'<tr style="{"" if row.passed else "background:#fde2e1;"}">'
            f'<td style="{cell}overflow-wrap:anywhere;">{html.escape(row.claim)}</td>'
            f'<td style="{cell}text-align:right;white-space:nowrap;">'
            f'{html.escape(format_number(row.measured if row.measured == row.measured else row.measured_text))}</td>'
            f'<td style="{cell}overflow-wrap:anywhere;">{html.escape(row.relation)} '
            f'{html.escape(format_number(row.expected if row.expected == row.expected else row.expected_text))}</td>'
            f'<td style="{cell}text-align:center;">{"yes" if row.passed else "<strong>NO</strong>"}</td></tr>'
            for row in rows.itertuples())
        details.append(f'<details><summary><a href="{link}">{title}</a>: {held} of {len(rows)} checks hold'
                       f'</summary><table style="width:100%;border-collapse:collapse;font-size:0.9em;">'
                       f'<thead><tr><th style="{cell}text-align:left;">claim</th><th style="{cell}">measured</th>'
                       f'<th style="{cell}text-align:left;">expected</th><th style="{cell}">holds</th></tr></thead>'
                       f'<tbody>{body}</tbody></table></details>')
    head = "".join(f'<th style="{cell}text-align:left;">{name}</th>'
                   for name in ("part", "chapter", "checks that hold", "claims that do not hold"))
    return (f'<table class="steerlib-scoreboard" style="width:100%;border-collapse:collapse;font-size:0.9em;">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(summary)}</tbody></table>' + "".join(details))


def glue_all(**values) -> None:
    """``myst_nb.glue(name, value, display=False)`` for each value, so the prose's numbers and verdicts come from
    the computation (the chapters' convention); needs the ``notebook`` extra (myst-nb)."""
    from myst_nb import glue

    for name, value in values.items():
        glue(name, value, display=False)


def verdict_words(held: bool, holds: str = "holds", fails: str = "does not hold") -> str:
    """The verdict a check chose, as words for the prose (glued with :func:`glue_all`): ``holds`` when the check
    held, ``fails`` otherwise, so a sentence stays true when a rerun on another model flips the check."""
    return holds if held else fails
