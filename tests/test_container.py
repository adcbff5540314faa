"""The embedding container: a header that lies is refused with InvalidInputError, like truncation or a bad CRC.

The caches (disk, Redis) treat InvalidInputError from ``decode_container`` as a corrupt entry (a miss), so any other
exception type would reach the caller instead.
"""

import json
import struct

import numpy as np
import pytest

from segany.container import MAGIC, decode_container, encode_container
from segany.errors import InvalidInputError


def _blob(array=None, **header_changes) -> bytes:
    """A container of ``array`` whose JSON header has ``header_changes`` applied (raw JSON text for ``_raw``)."""
    array = np.zeros((1, 4, 2, 2), np.float32) if array is None else array
    blob = encode_container(array, (30, 40), (24, 32), "fp", "v1")
    (head_len,) = struct.unpack("<I", blob[8:12])
    data = blob[12 + head_len :]
    header = json.loads(blob[12 : 12 + head_len])
    raw = header_changes.pop("_raw", None)
    header.update(header_changes)
    head = (raw if raw is not None else json.dumps(header)).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + data


def test_round_trip_and_fp16():
    array = np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)
    out = decode_container(encode_container(array, (30, 40), (24, 32), "fp", "v1"))
    assert out.original_size == (30, 40) and out.input_size == (24, 32) and out.model_fingerprint == "fp"
    np.testing.assert_array_equal(out.array, array)
    half = decode_container(encode_container(array, (30, 40), (24, 32), "fp", "v1", dtype="float16"))
    assert half.stored_dtype == "float16" and np.abs(half.array - array).max() < 1e-2


@pytest.mark.parametrize("changes", [
    {"shape": [-1, -4, 2, 2]},  # the product matches the data, the sizes do not
    {"shape": [2**32, 2**32], "data_len": 0},  # a numpy product would wrap to 0
    {"shape": [1, 4, 2, 2.5]},
    {"shape": ["1", 4, 2, 2]},
    {"shape": 16},
    {"shape": [1e999]},  # json reads it as inf: int() overflows
    {"data_len": 1e999},
    {"original_size": [-30, 40]},
    {"original_size": [30, 40, 3]},
    {"input_size": [24]},
    {"dtype": "float64"},
    {"_raw": "[" * 100_000 + "]" * 100_000},  # deeper than the JSON parser recurses
    {"_raw": "[]"},
])
def test_a_lying_header_is_invalid_input(changes):
    with pytest.raises(InvalidInputError, match="corrupt|truncated"):
        decode_container(_blob(**changes))


def test_a_header_that_reshapes_the_same_count_is_accepted():
    """Only the element count is checked against the data; the shape is the header's (the decoder checks it)."""
    out = decode_container(_blob(shape=[1, 2, 4, 2]))
    assert out.array.shape == (1, 2, 4, 2)


def test_truncation_and_crc():
    blob = _blob()
    with pytest.raises(InvalidInputError, match="truncated"):
        decode_container(blob[:-1])
    with pytest.raises(InvalidInputError, match="CRC"):
        decode_container(blob[:-1] + bytes([blob[-1] ^ 1]))
