"""Check tables: every chapter ends by printing its claims with the measured numbers.

The printed table is what nbval holds fixed (cells tagged ``nbval-check-output``), so numbers are
rounded to a stated number of significant digits before printing, never sanitised afterwards.

Example:
    >>> checks = CheckTable("Theorem 3.8")
    >>> checks.add("ΔCE''(0) equals the coefficient", measured=0.1234567, expected=0.1234568, tolerance=1e-6)
    >>> checks.add("ΔCE is convex on the grid", measured=0.0, expected="min ΔCE'' >= 0", passed=True)
    >>> checks.show()  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real


def format_number(value, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits (``-0`` printed as ``0``); non-numbers as ``str``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return str(value)
    text = f"{float(value):.{digits}g}"
    return "0" if text in ("-0", "-0.0") else text


@dataclass
class Check:
    """One claim with what was measured, what was expected and whether it held."""

    claim: str
    measured: str
    expected: str
    passed: bool


@dataclass
class CheckTable:
    """A titled list of :class:`Check` rows, printed as a fixed-width table.

    Args:
        title: what is being checked, e.g. ``"Theorem 3.3 on the Eq. (2) dataset"``.
        digits: significant digits of printed numbers (keep it small enough to be stable across runs).
    """

    title: str
    digits: int = 4
    rows: list[Check] = field(default_factory=list)

    def add(self, claim: str, measured, expected=None, tolerance: float | None = None,
            passed: bool | None = None) -> bool:
        """Record a claim and return whether it passed.

        With ``tolerance``, ``passed`` is ``|measured - expected| <= tolerance``; otherwise give ``passed``
        explicitly (``expected`` is then a plain-words criterion such as ``"> 0"``).
        """
        if passed is None:
            if tolerance is None:
                raise ValueError("give either a tolerance (numeric check) or passed= (criterion check)")
            passed = abs(float(measured) - float(expected)) <= tolerance
        expected_text = format_number(expected, self.digits) if expected is not None else ""
        if tolerance is not None:
            expected_text += f" ± {format_number(tolerance, 2)}"
        self.rows.append(Check(claim, format_number(measured, self.digits), expected_text, bool(passed)))
        return bool(passed)

    @property
    def all_passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def render(self) -> str:
        header = ("claim", "measured", "expected", "pass")
        cells = [header] + [(r.claim, r.measured, r.expected, "yes" if r.passed else "NO") for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(4)]
        lines = [self.title, "  ".join("-" * w for w in widths)]
        for i, row in enumerate(cells):
            lines.append("  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        passed = sum(r.passed for r in self.rows)
        lines.append(f"{passed}/{len(self.rows)} checks pass")
        return "\n".join(lines)

    def show(self) -> None:
        """Print the table (the cell's output nbval compares)."""
        print(self.render())
