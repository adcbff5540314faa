"""Prompt sources: what to segment in each image, read from a JSONL file, COCO detections or YOLO txt files.

All coordinates end up in original pixels of the upright image (x right, y down); boxes are x0, y0, x1, y1.

* **JSONL** (``.jsonl``): one JSON object per line. Either one line per image::

      {"image": "street/0001.jpg", "prompts": [{"box": [x0, y0, x1, y1], "class": "car"},
                                               {"points": [[x, y], [x, y]], "labels": [1, 0], "class": "person"}]}

  or one line per object (``{"image": ..., "box": ..., "class": ...}``); lines of the same image are merged.
  ``labels`` default to all-foreground; ``class`` (or ``category``) defaults to ``"object"``; ``"multimask": true``
  picks the best of three candidates (the default for a single click without a box).
* **COCO** (``.json``): a dataset with ``images``, ``annotations`` (``bbox`` [x, y, w, h]) and ``categories``; every
  annotation's box becomes a box prompt, its category is kept (id and name). A detector's results list (no
  ``images``) is accepted when each entry names its image with ``file_name``/``image``.
* **YOLO** (a folder): ``<name without suffix>.txt`` per image with lines ``class cx cy w h`` normalised to [0, 1]
  (a trailing confidence is ignored); class names from ``classes.txt`` or ``data.yaml``-style ``names:`` in that
  folder, else ``class_<k>``.

Images are matched by name (relative path), then by file name, then by file name without suffix, where the
entry's folders do not contradict the image's (``x.png`` or ``data/s1/x.png`` may be ``s1/x.png``; ``s2/x.png``
may not); an entry that several images would take that way is refused as ambiguous.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from segany.annotate.inputs import name_stem
from segany.errors import InvalidInputError

log = logging.getLogger("segany.annotate")

DEFAULT_CLASS = "object"


@dataclass(frozen=True)
class Category:
    """An output class: COCO ``id``, ``name``, and its index in YOLO files."""

    id: int
    name: str
    yolo_index: int


@dataclass(frozen=True)
class ObjectPrompt:
    """What to segment for one object.

    Attributes:
        box: (x0, y0, x1, y1) original pixels, or None. With ``normalized`` it is (cx, cy, w, h) in [0, 1] (YOLO)
            and is resolved against the image size by :meth:`resolved`.
        points: ((x, y), ...) original pixels, or None; ``labels`` 1 foreground, 0 background.
        category: index into the source's category list.
        multimask: decode three candidates and keep the best.
    """

    box: tuple[float, ...] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    category: int = 0
    multimask: bool = False
    normalized: bool = False

    def resolved(self, height: int, width: int) -> ObjectPrompt:
        if not self.normalized or self.box is None:
            return self
        cx, cy, w, h = self.box
        box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        return ObjectPrompt(box, self.points, self.labels, self.category, self.multimask, False)


@dataclass
class PromptSource:
    """Prompts per image plus the category table."""

    categories: list[Category]
    by_name: dict[str, list[ObjectPrompt]] = field(default_factory=dict)
    description: str = ""

    #: Whether the source names images without their suffix (YOLO label files: ``train/frame.0001``).
    keys_without_suffix = False

    def __post_init__(self) -> None:
        self._by_file: dict[str, list[str]] = {}
        self._by_stem: dict[str, list[str]] = {}
        for name in self.by_name:
            p = PurePosixPath(name)
            if self.keys_without_suffix:  # the key's last part is already the image's stem (dots and all)
                self._by_stem.setdefault(p.name, []).append(name)
            else:
                self._by_file.setdefault(p.name, []).append(name)
                self._by_stem.setdefault(p.stem, []).append(name)

    def prompts_for(self, name: str) -> list[ObjectPrompt] | None:
        """Prompts of the image called ``name``, or None when the source does not mention it."""
        key = self.key_for(name)
        return None if key is None else self.by_name[key]

    def key_for(self, name: str) -> str | None:
        """The source's name for the image ``name``: the same name, else the one entry with its file name (or stem)
        whose folders do not contradict the image's (``x.png`` or ``data/s1/x.png`` match ``s1/x.png``;
        ``s2/x.png`` does not)."""
        if name in self.by_name:
            return name
        p = PurePosixPath(name)
        for table, key, whole in ((self._by_file, p.name, name), (self._by_stem, p.stem, name_stem(name))):
            hits = [k for k in table.get(key, []) if _same_place(self._key_path(k, table is self._by_stem), whole)]
            if len(hits) == 1:
                return hits[0]
        return None

    def _key_path(self, key: str, as_stem: bool) -> str:
        """``key`` as the path it is compared with: without its suffix when matched by stem."""
        return name_stem(key) if as_stem and not self.keys_without_suffix else key

    def shared_keys(self, names: list[str]) -> dict[str, list[str]]:
        """Entries that more than one of the images ``names`` would take by file name or stem (ambiguous)."""
        takers: dict[str, list[str]] = {}
        for name in names:
            key = self.key_for(name)
            if key is not None and key != name:
                takers.setdefault(key, []).append(name)
        return {key: found for key, found in takers.items() if len(found) > 1}


def _same_place(key: str, name: str) -> bool:
    """Whether a prompt entry called ``key`` may be the image ``name``: a bare file name, or one path ending with the
    other at a folder boundary."""
    return "/" not in key or key == name or key.endswith("/" + name) or name.endswith("/" + key)


def everything_categories() -> list[Category]:
    return [Category(1, DEFAULT_CLASS, 0)]


def load_prompts(path: str | Path) -> PromptSource:
    """Read a prompt file or folder (format chosen by suffix, see the module docstring)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_yolo(path)
    if not path.is_file():
        raise InvalidInputError(f"prompt source {str(path)!r} does not exist")
    loader = {".jsonl": _load_jsonl, ".json": _load_coco}.get(path.suffix.lower())
    if loader is None:
        raise InvalidInputError(
            f"prompt source {str(path)!r}: expected a .jsonl file, a COCO .json file or a folder of YOLO .txt files"
        )
    return _checked(loader, path)


def _checked(loader, path: Path) -> PromptSource:
    """``loader(path)``, with any failure to read the file's structure as one InvalidInputError line."""
    try:
        return loader(path)
    except InvalidInputError:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path.name}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except RecursionError:
        raise InvalidInputError(f"{path.name}: JSON nested too deeply") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InvalidInputError(f"{path.name}: not a prompt file of the expected layout ({type(exc).__name__}: "
                                f"{exc}); see docs/annotate.md") from None


# ------------------------------------------------------------------------------------------------------ JSONL


def _load_jsonl(path: Path) -> PromptSource:
    names: dict[str, int] = {}
    by_name: dict[str, list[ObjectPrompt]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{path.name} line {number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                raise InvalidInputError(f'{where}: each line must be an object with "image": "<name>"')
            objects = entry.get("prompts", entry.get("objects"))
            inline = [k for k in _OBJECT_KEYS if k in entry]
            if inline and objects is not None:
                raise InvalidInputError(f'{where}: {", ".join(inline)} beside "prompts" would be ignored: put each '
                                        'object\'s box/points inside "prompts"')
            if inline:  # one object per line: the line is the object (its keys checked with it)
                objects = [{k: v for k, v in entry.items() if k != "image"}]
            else:
                _warn_unknown(entry, _ENTRY_KEYS, where)
                objects = [] if objects is None else objects
            if not isinstance(objects, list):
                raise InvalidInputError(f'{where}: "prompts" must be a list of objects')
            prompts = by_name.setdefault(_normalize(entry["image"]), [])
            for obj in objects:
                prompts.append(_jsonl_object(obj, names, where))
    categories = [Category(i + 1, n, i) for n, i in names.items()] or everything_categories()
    return PromptSource(categories, by_name, f"JSONL {path.name}")


#: Keys of a JSONL line, and of one object in it (see docs/annotate.md); others are warned about (e.g. "bbox").
_ENTRY_KEYS = frozenset({"image", "prompts", "objects"})
_OBJECT_KEYS = frozenset({"box", "points", "labels", "class", "category", "multimask"})


def _warn_unknown(obj: dict, known: frozenset, where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        log.warning("%s: ignoring %s (known: %s)", where, ", ".join(map(repr, unknown)), ", ".join(sorted(known)))


def _jsonl_object(obj, names: dict[str, int], where: str) -> ObjectPrompt:
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{where}: a prompt must be an object with box and/or points")
    _warn_unknown(obj, _OBJECT_KEYS, where)
    box = obj.get("box")
    points = obj.get("points")
    if box is None and not points:
        raise InvalidInputError(f"{where}: a prompt needs a box [x0, y0, x1, y1] and/or points [[x, y], ...]")
    try:
        box_t = None if box is None else tuple(float(v) for v in box)
        points_t = None if not points else tuple((float(p[0]), float(p[1])) for p in points)
        labels = obj.get("labels")
        labels_t = None if points_t is None else tuple(int(v) for v in (labels or [1] * len(points_t)))
    except (TypeError, ValueError, IndexError, KeyError):
        raise InvalidInputError(f"{where}: box must be 4 numbers, points [[x, y], ...], labels integers") from None
    if box_t is not None and len(box_t) != 4:
        raise InvalidInputError(f"{where}: box must be [x0, y0, x1, y1], got {len(box_t)} numbers")
    name = str(obj.get("class", obj.get("category", DEFAULT_CLASS)))
    index = names.setdefault(name, len(names))
    single_click = box_t is None and points_t is not None and len(points_t) == 1
    multimask = bool(obj.get("multimask", single_click))
    return ObjectPrompt(box_t, points_t, labels_t, index, multimask)


# ------------------------------------------------------------------------------------------------------- COCO


def _load_coco(path: Path) -> PromptSource:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path.name}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and "annotations" in data:
        images = {}
        for number, img in enumerate(data.get("images") or []):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise InvalidInputError(f"{path.name} image {number}: needs an id and a file_name")
            images[img["id"]] = _normalize(img["file_name"])
        anns = data["annotations"]
        cats = data.get("categories") or []
    elif isinstance(data, list):
        images, anns, cats = {}, data, []
    else:
        raise InvalidInputError(f"{path.name}: expected a COCO dataset (images, annotations, categories) or a list")
    cat_ids = sorted({int(c["id"]) for c in cats} | {int(a.get("category_id", 1)) for a in anns})
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    categories = [Category(cid, names.get(cid, f"class_{cid}"), i) for i, cid in enumerate(cat_ids)]
    index = {c.id: i for i, c in enumerate(categories)}
    by_name: dict[str, list[ObjectPrompt]] = {name: [] for name in images.values()}
    for number, ann in enumerate(anns):
        where = f"{path.name} annotation {number}"
        name = images.get(ann.get("image_id")) if images else None
        name = name or ann.get("file_name") or ann.get("image")
        if name is None:
            raise InvalidInputError(f"{where}: its image_id is not in 'images' and it has no file_name")
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInputError(f"{where}: bbox must be [x, y, w, h]") from None
        prompt = ObjectPrompt((x, y, x + w, y + h), category=index[int(ann.get("category_id", 1))])
        by_name.setdefault(_normalize(name), []).append(prompt)
    return PromptSource(categories, by_name, f"COCO {path.name}")


# ------------------------------------------------------------------------------------------------------- YOLO


def _load_yolo(folder: Path) -> PromptSource:
    by_name: dict[str, list[ObjectPrompt]] = {}
    highest = -1
    for txt in sorted(folder.rglob("*.txt")):
        if txt.name == "classes.txt":
            continue
        prompts = []
        for number, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                cls = int(fields[0])
                cx, cy, w, h = (float(v) for v in fields[1:5])
            except ValueError:
                raise InvalidInputError(f"{txt.name} line {number}: expected 'class cx cy w h'") from None
            if len(fields) < 5 or cls < 0:
                raise InvalidInputError(f"{txt.name} line {number}: expected 'class cx cy w h'")
            highest = max(highest, cls)
            prompts.append(ObjectPrompt((cx, cy, w, h), category=cls, normalized=True))
        by_name[txt.relative_to(folder).with_suffix("").as_posix()] = prompts
    class_names = _yolo_names(folder)
    count = max(highest + 1, len(class_names))
    categories = [
        Category(k + 1, class_names[k] if k < len(class_names) else f"class_{k}", k) for k in range(count)
    ] or everything_categories()
    return YoloSource(categories, by_name, f"YOLO {folder.name}/")


class YoloSource(PromptSource):
    """YOLO label files are named after the image without its suffix."""

    keys_without_suffix = True

    def key_for(self, name: str) -> str | None:
        stem = name_stem(name)
        return stem if stem in self.by_name else super().key_for(name)


def _yolo_names(folder: Path) -> list[str]:
    classes = folder / "classes.txt"
    if classes.is_file():
        return [line.strip() for line in classes.read_text(encoding="utf-8").splitlines() if line.strip()]
    for yaml_name in ("data.yaml", "dataset.yaml"):
        yaml_file = folder / yaml_name
        if yaml_file.is_file():
            return _yaml_names(yaml_file.read_text(encoding="utf-8").splitlines())
    return []


def _yaml_names(lines: Iterable[str]) -> list[str]:
    """``names: [a, b]`` or a ``names:`` block of ``  0: a`` / ``  - a`` lines (no YAML library needed)."""
    lines = list(lines)
    for i, line in enumerate(lines):
        match = re.match(r"\s*names\s*:\s*(.*)$", line)
        if not match:
            continue
        rest = match.group(1).strip()
        if rest.startswith("["):
            return [n.strip().strip("'\"") for n in rest.strip("[]").split(",") if n.strip()]
        names = []
        for item in lines[i + 1 :]:
            m = re.match(r"\s+(?:-\s*|\d+\s*:\s*)(.+)$", item)
            if not m:
                break
            names.append(m.group(1).strip().strip("'\""))
        return names
    return []


def _normalize(name: str) -> str:
    name = str(name).replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return PurePosixPath(name).as_posix()
