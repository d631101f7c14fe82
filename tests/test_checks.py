"""Check tables: verdicts, display, and the record comparison the regression relies on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from steerlib.checks import RECORD_MIME, CheckTable, compare_records


def table(measured=0.75, bound=0.5, claim="share of curves that bump"):
    checks = CheckTable("a title")
    checks.add(claim, measured, ">", bound, note="most bump")
    checks.add("an error at rounding level", 3e-16, 0.0, tolerance=1e-9, atol=1e-12)
    checks.add("a criterion in words", "yes", "yes", passed=True)
    return checks


def test_the_three_forms_decide_the_verdict():
    checks = CheckTable("t")
    assert checks.add("within", 1.02, 1.0, tolerance=0.05)
    assert not checks.add("outside", 1.2, 1.0, tolerance=0.05)
    assert checks.add("bound", 0.6, ">", 0.5)
    assert not checks.add("bound fails", 0.4, ">=", 0.5)
    assert not checks.add("words", 3, "of 10 tokens", passed=False)
    assert [row.passed for row in checks.rows] == [True, False, True, False, False]


@pytest.mark.parametrize("arguments", [dict(), dict(relation_or_expected=">", expected=0.5, passed=True),
                                       dict(relation_or_expected="criterion")])
def test_ambiguous_or_incomplete_rows_are_refused(arguments):
    with pytest.raises(ValueError):
        CheckTable("t").add("claim", 1.0, **arguments)


def test_numpy_values_become_plain_json():
    checks = CheckTable("t")
    checks.add("int", np.int64(84), 84, tolerance=0)
    checks.add("float", np.float32(0.25), "<", np.float64(0.5))
    checks.add("bool", np.bool_(True), "True", passed=True)
    checks.add("nan", float("nan"), "<", 1.0)
    record = json.loads(json.dumps(checks.record(), allow_nan=False))
    assert [row["measured"] for row in record["rows"]] == [84, 0.25, True, "nan"]
    assert isinstance(record["rows"][0]["measured"], int)


def test_display_has_text_html_and_record():
    bundle = table()._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", RECORD_MIME}
    assert "> 0.5 (most bump)" in bundle["text/plain"] and "3/3 checks pass" in bundle["text/plain"]
    assert "<table" in bundle["text/html"] and "overflow-wrap:anywhere" in bundle["text/html"]


def test_failed_rows_stand_out_and_claims_are_escaped_in_html():
    html = table(measured=0.25, claim="tokens '<s>' & '\\n'").render_html()
    assert "NO</strong>" in html and "background:#fde2e1" in html
    assert "&lt;s&gt;" in html and "&amp;" in html


def test_records_agree_within_the_stated_reproducibility():
    stored = table(measured=0.75).record()
    assert compare_records(stored, table(measured=0.75 * (1 + 5e-4)).record()) == []
    assert compare_records(stored, table(measured=0.75 * (1 + 5e-3)).record()) != []


def test_noise_level_values_compare_with_their_absolute_floor():
    stored, fresh = CheckTable("t"), CheckTable("t")
    stored.add("error", 3e-16, 0.0, tolerance=1e-9, atol=1e-12)
    fresh.add("error", 7e-15, 0.0, tolerance=1e-9, atol=1e-12)
    assert compare_records(stored.record(), fresh.record()) == []


def test_a_value_near_a_rounding_boundary_does_not_flip():
    """3.745e-6 and 3.7449e-6 print as 3.75e-06 and 3.74e-06 with three digits; as numbers they agree."""
    stored, fresh = CheckTable("t", digits=3), CheckTable("t", digits=3)
    stored.add("KL", 3.7450e-6, "<", 1e-2)
    fresh.add("KL", 3.7449e-6, "<", 1e-2)
    assert stored.render() != fresh.render()
    assert compare_records(stored.record(), fresh.record()) == []


@pytest.mark.parametrize("change", ["claim", "verdict", "rows", "title"])
def test_claims_verdicts_rows_and_titles_compare_exactly(change):
    stored = table().record()
    fresh = {"claim": table(claim="another claim"), "verdict": table(bound=0.8),
             "rows": CheckTable("a title"), "title": CheckTable("another title")}[change]
    if change == "title":
        for row in table().rows:
            fresh.rows.append(row)
    assert compare_records(stored, fresh.record())


def test_a_measured_expected_value_is_compared_as_a_number():
    stored, fresh = CheckTable("t"), CheckTable("t")
    stored.add("ΔCE equals the plateau", 5.5, 5.50001, tolerance=0.05)
    fresh.add("ΔCE equals the plateau", 5.5, 5.6, tolerance=0.2)
    differences = compare_records(stored.record(), fresh.record())
    assert any("expected" in d for d in differences) and any("tolerance" in d for d in differences)


def test_non_finite_values_compare_equal_only_to_themselves():
    stored, fresh = CheckTable("t"), CheckTable("t")
    stored.add("x", math.nan, "<", 1.0)
    fresh.add("x", math.nan, "<", 1.0)
    assert compare_records(stored.record(), fresh.record()) == []
    other = CheckTable("t")
    other.add("x", 0.5, "<", 1.0)
    assert compare_records(stored.record(), other.record())


def test_verdict_words_follow_the_check():
    from steerlib.checks import verdict_words

    table = CheckTable("verdicts")
    assert verdict_words(table.add("a share", 0.7, ">", 0.5)) == "holds"
    assert verdict_words(table.add("a share", 0.3, ">", 0.5), "rises", "does not rise") == "does not rise"
