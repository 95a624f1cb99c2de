"""The users' text files: UTF-8 with or without a byte-order mark; anything else one plain error line."""
from __future__ import annotations

from pathlib import Path

import pytest

from svreg_core.errors import InputError
from svreg_core.text_input import read_text


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
