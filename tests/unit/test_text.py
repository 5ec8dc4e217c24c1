"""edgeq.text: the one table and number formatting the reports and the terminal share."""

from __future__ import annotations

from edgeq.text import markdown_table, one_line_cell, percent, text_table


def test_percent() -> None:
    assert (percent(0.985), percent(None), percent(None, missing="-"), percent(1)) == ("98.50%", "–", "-", "100.00%")


def test_markdown_tables_in_both_separator_styles() -> None:
    assert markdown_table(["a", "b"], [["x|y", 2]]) == ["| a | b |", "|---|---|", "| x\\|y | 2 |"]
    spaced = markdown_table(["op", "mcu"], [["ADD", "yes\n (int8)"]], align=["---", ":---:"], cell=one_line_cell)
    assert spaced == ["| op | mcu |", "| --- | :---: |", "| ADD | yes (int8) |"]


def test_text_table_aligns_columns_and_trims_the_right() -> None:
    assert text_table(("op", "count"), [("CONV_2D", "2"), ("ADD", "10")]) == [
        "  op       count", "  CONV_2D  2", "  ADD      10"]
