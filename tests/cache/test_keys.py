"""Cache keys: deterministic, sensitive to every part, unambiguous."""

from __future__ import annotations

import hashlib

import pytest

from segany.cache import cache_key, sha256_bytes
from segany.errors import InvalidInputError

IMAGE = sha256_bytes(b"image bytes")


def test_sha256_bytes():
    assert sha256_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_bytes(memoryview(b"abc")) == sha256_bytes(bytearray(b"abc"))


def test_key_is_deterministic_hex_and_case_insensitive_in_the_hash():
    key = cache_key(IMAGE, "vit_b:1234", "pre-v1")
    assert key == cache_key(IMAGE.upper(), "vit_b:1234", "pre-v1")
    assert len(key) == 64 and int(key, 16) >= 0 and key == key.lower()


def test_every_part_changes_the_key():
    base = cache_key(IMAGE, "vit_b:1234", "pre-v1")
    variants = [
        cache_key(sha256_bytes(b"other image"), "vit_b:1234", "pre-v1"),
        cache_key(IMAGE, "vit_b:1235", "pre-v1"),
        cache_key(IMAGE, "vit_b:1234", "pre-v2"),
        cache_key(IMAGE, "vit_b:1234", "pre-v1", crop=(0, 0, 10, 10)),
        cache_key(IMAGE, "vit_b:1234", "pre-v1", crop=(0, 0, 10, 11)),
    ]
    assert len({base, *variants}) == 6


def test_parts_cannot_run_into_each_other():
    assert cache_key(IMAGE, "ab", "c") != cache_key(IMAGE, "a", "bc")


@pytest.mark.parametrize(
    "args",
    [
        ("not-hex", "m", "p", None),
        (IMAGE[:-1], "m", "p", None),
        (IMAGE, "", "p", None),
        (IMAGE, "m", None, None),
        (IMAGE, "m", "p", (0, 0, 10)),
        (IMAGE, "m", "p", (0, 0, 10.5, 10)),
        (IMAGE, "m", "p", (5, 0, 5, 10)),
        (IMAGE, "m", "p", (-1, 0, 5, 10)),
    ],
)
def test_bad_parts_are_rejected(args):
    with pytest.raises(InvalidInputError):
        cache_key(*args)
