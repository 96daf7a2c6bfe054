"""bench/docsection.py: a benchmark rewrites its own section of the page and nothing else."""

from __future__ import annotations

from bench.docsection import write_section

PAGE = "# Benchmarks\n\n## A\n\nold a\n\n## A: reading\n\nkept\n\n## B\n\nold b\n"


def test_the_named_section_is_replaced_up_to_the_next_heading(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)
    write_section("## A", "## A\n\nnew a\n", page)
    # "## A: reading" is another section (the heading must match the whole line).
    assert page.read_text() == PAGE.replace("old a", "new a")
    write_section("## B", "## B\n\nnew b", page)
    assert page.read_text().endswith("## B\n\nnew b\n")
    assert "kept" in page.read_text()


def test_a_missing_section_is_appended(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)
    write_section("## C", "## C\n\nc\n", page)
    assert page.read_text() == PAGE + "\n## C\n\nc\n"
