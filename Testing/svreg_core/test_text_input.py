"""The users' text files: UTF-8 with or without a byte-order mark; anything else one plain error line."""
from __future__ import annotations

from pathlib import Path

import pytest

from svreg_core.errors import InputError
from svreg_core.text_input import read_table, read_text, table_path


def test_utf8_with_and_without_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "plain.csv").write_bytes("fixed,moving\nä.nii,b.nii\n".encode())
    (tmp_path / "bom.csv").write_bytes("fixed,moving\nä.nii,b.nii\n".encode("utf-8-sig"))
    assert read_text(tmp_path / "plain.csv", "pair list") == read_text(tmp_path / "bom.csv", "pair list") \
        == "fixed,moving\nä.nii,b.nii\n"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "pair list not found: "),
    (lambda p: p.mkdir(), "pair list not found: "),
    (lambda p: p.write_bytes(b"fixed,moving\n\xe4.nii,b.nii\n"), "is not UTF-8 text (byte 13: invalid continuation"),
])
def test_missing_folder_or_not_utf8_is_one_plain_line(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "pairs.csv"
    make(path)
    with pytest.raises(InputError) as info:
        read_text(path, "pair list")
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_table_rows_hand_values(tmp_path: Path) -> None:
    """Names and cells stripped, blank rows left out (their lines still counted), a missing cell empty, a cell
    beyond the header dropped; ``.tsv`` is tab-separated."""
    (tmp_path / "pairs.csv").write_text(" fixed , moving ,output\n a.nii , b.nii ,x\n\n,,\nc.nii,d.nii\ne,f,g,extra\n")
    assert read_table(tmp_path / "pairs.csv", "pairs file", ("fixed", "moving")) == [
        (2, {"fixed": "a.nii", "moving": "b.nii", "output": "x"}),
        (5, {"fixed": "c.nii", "moving": "d.nii", "output": ""}),
        (6, {"fixed": "e", "moving": "f", "output": "g"}),
    ]
    (tmp_path / "pairs.tsv").write_text("fixed\tmoving\na, b.nii\tc.nii\n")
    tsv = read_table(tmp_path / "pairs.tsv", "pair list", ("fixed",))
    assert tsv == [(2, {"fixed": "a, b.nii", "moving": "c.nii"})]


def test_table_missing_columns_are_named(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("fixed,moving_image\na,b\n")
    with pytest.raises(InputError) as info:
        read_table(tmp_path / "pairs.csv", "pair list", ("fixed", "moving", "fixed_labels"))
    assert str(info.value) == (f"pair list {tmp_path / 'pairs.csv'} needs a header line with the columns fixed, "
                               "moving, fixed_labels (missing: moving, fixed_labels); the columns of its first "
                               'line, separated by commas, are "fixed", "moving_image".')


@pytest.mark.parametrize(("first_lines", "read"), [
    ("fixed image;moving image\r\na.nii;b.nii\r\n", 'the columns of its first line, separated by semicolons, are '
                                                     '"fixed image", "moving image"'),
    ("# pairs of study 3\nfixed,moving\n", 'the columns of its first line, separated by commas, are "# pairs of '
                                             'study 3"'),
    ("\nfixed,moving\na.nii,b.nii\n", "its first line is empty"),
])
def test_a_header_not_read_as_the_columns_says_what_was_read(tmp_path: Path, first_lines: str, read: str) -> None:
    """A semicolon-separated export (spreadsheets in many locales), a title line or a blank line before the header
    was told "missing: fixed, moving" about a header the user sees holds both; the message says what was read."""
    (tmp_path / "pairs.csv").write_text(first_lines)
    with pytest.raises(InputError) as info:
        read_table(tmp_path / "pairs.csv", "pairs file", ("fixed", "moving"))
    assert str(info.value) == (f"pairs file {tmp_path / 'pairs.csv'} needs a header line with the columns fixed, "
                               f"moving (missing: fixed, moving); {read}.")


def test_a_semicolon_separated_export_is_read(tmp_path: Path) -> None:
    """A spreadsheet's CSV export where the decimal separator is a comma (German, French... settings) separates the
    cells with semicolons: it was refused ("separated by commas, are "fixed;moving""); a header line with semicolons
    and no comma now reads as such, a comma inside a file name included."""
    (tmp_path / "pairs.csv").write_bytes("\ufefffixed;moving;output\r\na, b.nii;c.nii;x\r\n".encode())
    assert read_table(tmp_path / "pairs.csv", "pairs file", ("fixed", "moving")) == [
        (2, {"fixed": "a, b.nii", "moving": "c.nii", "output": "x"})]


def test_table_path_relative_to_the_table(tmp_path: Path) -> None:
    table = tmp_path / "lists" / "pairs.csv"
    assert table_path("img/a.nii", table) == tmp_path / "lists" / "img" / "a.nii"
    assert table_path(str(tmp_path / "b.nii"), table) == tmp_path / "b.nii"
    assert table_path("~/c.nii", table) == Path.home() / "c.nii"
