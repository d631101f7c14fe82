"""The scoreboard page gathers every check row of every chapter from the reference notebooks, and links each
chapter's page."""

from __future__ import annotations

import posixpath
from pathlib import Path

import nbformat

from steerlib.checks import book_checks, notebook_records, scoreboard_html

ROOT = Path(__file__).resolve().parents[1]


def test_the_board_has_every_row_of_every_reference_notebook():
    board = book_checks(ROOT)
    expected = sum(len(record["rows"]) for path in ROOT.glob("book/*/*.ipynb")
                   for record in notebook_records(nbformat.read(path, as_version=4)))
    assert len(board) == expected > 100
    assert board["passed"].dtype == bool and set(board["relation"]) <= {"", "=", ">", ">=", "<", "<="}
    assert (board["part"] != "").all() and (board["title"] != "").all()


def test_the_page_links_every_chapter_and_marks_what_failed():
    board = book_checks(ROOT)
    page = "book/beyond/scoreboard"
    html = scoreboard_html(board, page)
    for chapter in board["chapter"].unique():
        link = posixpath.relpath(chapter, posixpath.dirname(page)) + ".html"
        assert f'href="{link}"' in html
        assert (ROOT / posixpath.normpath(posixpath.join(posixpath.dirname(page), link))).with_suffix(".md").exists()
    assert html.count("<strong>NO</strong>") == int((~board["passed"]).sum())
    assert html.count("<details>") == board["chapter"].nunique()
