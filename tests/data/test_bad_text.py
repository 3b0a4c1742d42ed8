"""Split and id files: a UTF-8 byte-order mark is not part of the first id; a non-UTF-8 byte is a one-line error
naming the file; a negative seed is refused."""
from __future__ import annotations

import pytest

from fcnquant.data import DataConfig, load_ids
from fcnquant.data.voc import _read_split
from fcnquant.errors import DataError


def test_load_ids_strips_a_bom(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_bytes(b"\xef\xbb\xbfa_1\nb_2\n")
    assert load_ids(p) == ["a_1", "b_2"]


def test_split_reading_strips_a_bom(tmp_path):
    p = tmp_path / "val.txt"
    p.write_bytes(b"\xef\xbb\xbfa_1\nb_2\n")
    assert _read_split(p) == ["a_1", "b_2"]


@pytest.mark.parametrize("read", [load_ids, _read_split])
def test_a_latin1_byte_is_one_line_naming_the_file(tmp_path, read):
    p = tmp_path / "list.txt"
    p.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError) as info:
        read(p)
    msg = str(info.value)
    assert str(p) in msg and "not UTF-8" in msg and "\n" not in msg


def test_a_negative_seed_is_refused():
    with pytest.raises(DataError, match="seed must be an integer >= 0"):
        DataConfig(seed=-1)
