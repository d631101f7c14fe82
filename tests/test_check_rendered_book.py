"""The rendered-book check's reading of a DOM (no browser needed): synthetic pages as MathJax leaves them."""

import check_rendered_book
from check_rendered_book import analyse_rendered_page, main, totals

RENDERED_INLINE = ('<span class="math notranslate nohighlight"><mjx-container class="MathJax" jax="CHTML">'
                   '<mjx-math><mjx-mi><mjx-c class="mjx-c1D465"></mjx-c></mjx-mi></mjx-math><mjx-assistive-mml>'
                   '<math><mi>x</mi></math></mjx-assistive-mml></mjx-container></span>')
RENDERED_DISPLAY = ('<div class="math notranslate nohighlight"><mjx-container class="MathJax" jax="CHTML" '
                    'display="true"><mjx-math></mjx-math></mjx-container></div>')


def page(body: str) -> str:
    return f"<html><head><title>\\(title\\)</title><script>var tex = '\\\\(x\\\\)';</script></head><body>{body}</body></html>"


def test_a_typeset_page_passes_and_code_scripts_and_titles_are_not_read():
    report = analyse_rendered_page(page(f"<p>Let {RENDERED_INLINE} be given:</p>{RENDERED_DISPLAY}"
                                        "<pre>print('$$')</pre><p><code>\\(x\\)</code></p>"), "book/theory/a.html")
    assert (report.formulas, report.rendered) == (2, 2)
    assert report.problems() == []
    assert report.kind == "theory"
    assert report.summary().endswith(": ok")


def test_a_math_element_left_as_tex_is_not_rendered():
    report = analyse_rendered_page(page(f'<p>{RENDERED_INLINE} and <span class="math notranslate">\\(y^2\\)</span></p>'))
    assert (report.formulas, report.rendered) == (2, 1)
    assert report.unrendered == ["\\(y^2\\)"]
    assert "formula not rendered" in report.problems()[0]


def test_delimiters_left_in_running_text_fail():
    report = analyse_rendered_page(page("<p>the sum $$a + b$$ and \\(c\\) and \\begin{align}</p><p>costs $5</p>"))
    assert len(report.raw_text) == 1 and report.raw_text[0].startswith("the sum $$a + b$$")
    assert report.formulas == 0


def test_mathjax_errors_are_counted_once_per_formula():
    merror = ('<span class="math"><mjx-container><mjx-math><mjx-merror data-mjx-error="Double exponent: use braces '
              'to clarify"><mjx-mtext>Double exponent</mjx-mtext></mjx-merror></mjx-math><mjx-assistive-mml><math>'
              '<merror data-mjx-error="Double exponent: use braces to clarify"><mtext>Double exponent</mtext>'
              '</merror></math></mjx-assistive-mml></mjx-container></span>')
    undefined = ('<span class="math"><mjx-container><mjx-math><mjx-mtext style="color: red;"></mjx-mtext></mjx-math>'
                 '<mjx-assistive-mml><math><mtext mathcolor="red">\\foo</mtext><mtext mathcolor="red">warning'
                 '</mtext></math></mjx-assistive-mml></mjx-container></span>')
    report = analyse_rendered_page(page(f"<p>{merror} {undefined}</p><p>Math input error</p>"))
    assert report.math_errors == ["Double exponent: use braces to clarify", "undefined macro \\foo", "Math input error"]
    assert report.rendered == 2


def test_proof_boxes_with_raw_tex_are_named():
    good = f'<div class="proof theorem admonition" id="thm-good"><p>for every {RENDERED_INLINE}</p></div>'
    bad = ('<div class="proof lemma admonition" id="lem-bad"><p class="admonition-title">Lemma</p>'
           '<section><p>for every \\alpha in R</p></section></div>')
    report = analyse_rendered_page(page(good + bad + "<p>outside a box: \\alpha</p>"))
    assert report.proof_boxes == 2
    assert report.broken_proofs == [("lem-bad", "for every \\alpha in R")]
    assert report.raw_text == []      # a bare command outside proof boxes may be prose (a token '\\n' named in text)


def test_totals_group_pages_by_part_of_the_book():
    reports = [analyse_rendered_page(page(RENDERED_INLINE), "book/llm/a.html"),
               analyse_rendered_page(page('<span class="math">\\(x\\)</span>'), "book/llm/b.html"),
               analyse_rendered_page(page(""), "search.html")]
    lines = totals(reports)
    assert lines[0].startswith("llm: 2 pages, 1/2 formulas rendered") and lines[0].endswith("1 pages fail")
    assert lines[1].startswith("site: 1 pages") and lines[-1].startswith("all: 3 pages")


def test_without_a_browser_the_check_skips(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setattr(check_rendered_book.shutil, "which", lambda name: None)
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("SKIP: no headless browser found")
