"""Image discovery: folders (recursive), globs, list files, single files; names relative to the root."""

from __future__ import annotations

import pytest

from segany.annotate.inputs import discover_images
from segany.errors import InvalidInputError


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_is_recursive_sorted_and_filtered(tmp_path):
    for name in ("b.JPG", "a.png", "sub/c.webp", "sub/notes.txt", ".hidden/d.png", "out/e.png"):
        touch(tmp_path / name)
    items = discover_images(str(tmp_path), exclude=tmp_path / "out")
    assert [i.name for i in items] == ["a.png", "b.JPG", "sub/c.webp"]
    assert items[2].path == tmp_path / "sub" / "c.webp"


def test_glob_names_relative_to_the_fixed_prefix(tmp_path):
    for name in ("x/1.png", "x/y/2.png", "x/y/3.jpg"):
        touch(tmp_path / name)
    items = discover_images(str(tmp_path / "x" / "**" / "*.png"))
    assert [i.name for i in items] == ["1.png", "y/2.png"]


def test_list_file_relative_to_its_folder(tmp_path):
    touch(tmp_path / "imgs" / "1.png")
    touch(tmp_path / "imgs" / "deep" / "2.png")
    lst = tmp_path / "list.txt"
    lst.write_text("# images\nimgs/1.png\n\nimgs/deep/2.png\nimgs/missing.png\n")
    items = discover_images(str(lst))
    assert [i.name for i in items] == ["1.png", "deep/2.png", "missing.png"]  # missing: reported when labelling


def test_single_image_and_errors(tmp_path):
    img = touch(tmp_path / "one.png")
    assert [i.name for i in discover_images(str(img))] == ["one.png"]
    with pytest.raises(InvalidInputError, match="does not exist"):
        discover_images(str(tmp_path / "nope"))
    with pytest.raises(InvalidInputError, match="no images"):
        discover_images(str(tmp_path / "*.jpg"))
    with pytest.raises(InvalidInputError, match="neither an image"):
        discover_images(str(touch(tmp_path / "data.csv")))
