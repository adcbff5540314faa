"""Crash-safe output: atomic file writes and a journal of finished images.

Every file is written to a temporary name in its final folder and moved into place with ``os.replace``, so a reader
(or a re-run) sees either the old file or the new one, never a half-written one, whatever moment the process is
killed at. An image is finished when its record (``DIR/.segany/records/<hash>.json``) exists; the record is written
last, after the image's other outputs, so a re-run redoes exactly the images without one. The COCO file is rebuilt
from the records, never appended to.

Without ``fsync`` this survives the process being killed (the data is in the page cache); ``durable=True`` also
survives a power cut, at the cost of a disk flush per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from segany.errors import InvalidInputError

STATE_DIR = ".segany"
JOURNAL_VERSION = 1
#: Temp files of :func:`atomic_write` start with this; a new run removes those a killed run left (and no others).
TEMP_PREFIX = ".segany-tmp-"
#: Where segany writes under ``--out`` (besides the top level): the only folders searched for stale temp files.
OUTPUT_DIRS = (STATE_DIR, "labels", "masks", "overlays")


def atomic_write(path: Path, data: bytes | str, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Journal:
    """Finished-image records under ``out_dir/.segany``; checks that a re-run uses the same settings."""

    def __init__(self, out_dir: Path, settings: dict, durable: bool = False) -> None:
        self.out_dir = out_dir
        self.state = out_dir / STATE_DIR
        self.records_dir = self.state / "records"
        self.durable = durable
        self.settings = settings

    def open(self) -> None:
        """Create the state folder, or check the stored settings of an earlier run against ours."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InvalidInputError(f"--out {self.out_dir} is a file; give a folder (it is created if missing)")
        run_file = self.state / "run.json"
        if run_file.is_file():
            try:
                stored = json.loads(run_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                stored = None
            if not isinstance(stored, dict) or stored.get("settings") != self.settings:
                raise InvalidInputError(
                    f"{self.out_dir} holds a run with other settings ({run_file}); resume with the same options, "
                    "or write to a new --out folder"
                )
        else:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            payload = {"version": JOURNAL_VERSION, "settings": self.settings}
            atomic_write(run_file, json.dumps(payload, indent=1, sort_keys=True), self.durable)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        pattern = f"{TEMP_PREFIX}*.tmp"  # temp files of a killed run (see atomic_write), only ours
        stale = [*self.out_dir.glob(pattern)]
        for folder in OUTPUT_DIRS:
            stale += (self.out_dir / folder).rglob(pattern)
        for path in stale:
            path.unlink(missing_ok=True)

    def record_path(self, name: str) -> Path:
        return self.records_dir / (hashlib.sha256(name.encode("utf-8")).hexdigest()[:24] + ".json")

    def load(self, name: str) -> dict | None:
        """The record of a finished image, or None (unfinished, or a record that does not parse)."""
        path = self.record_path(name)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("name") == name else None

    def save(self, record: dict) -> None:
        atomic_write(self.record_path(record["name"]), json.dumps(record, separators=(",", ":")), self.durable)
