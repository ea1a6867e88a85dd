"""`make bench` refreshes the README's table itself: the block is there once, and a refresh
replaces the table and nothing else."""

from __future__ import annotations

from pathlib import Path

from tests.load.bench import README_BLOCK, refresh_readme

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_has_one_bench_block() -> None:
    assert len(README_BLOCK.findall(README.read_text())) == 1


def test_a_refresh_replaces_the_table_and_keeps_the_rest(tmp_path: Path) -> None:
    copy = tmp_path / "README.md"
    before = README.read_text()
    copy.write_text(before)
    table = "`make bench` at now: a new table.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert refresh_readme(copy, table)
    after = copy.read_text()
    assert table in after
    old_block = README_BLOCK.search(before)
    assert old_block is not None
    assert after.replace(table, old_block.group(2)) == before
    empty = tmp_path / "other.md"
    empty.write_text("# no block here\n")
    assert not refresh_readme(empty, table)
    assert empty.read_text() == "# no block here\n"
