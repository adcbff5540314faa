"""The batch labelling pipeline: load -> encode -> decode -> write, overlapped across images.

Threads: a pool of ``workers`` loaders reads and decodes image files ahead (in order); one encoder thread runs the
image encoder on the next image while the main thread decodes masks of the current one and writes its outputs.
Torch releases the GIL in its kernels, so encoder and decoder overlap. Finished images are journaled (see
:mod:`segany.annotate.journal`); the COCO file is rebuilt from the records every ``checkpoint_seconds`` and at
the end.
"""

from __future__ import annotations

import collections
import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from segany.annotate.exporters import Exporter, make_record
from segany.annotate.inputs import ImageItem
from segany.annotate.journal import Journal, atomic_write
from segany.annotate.sources import PromptSource
from segany.errors import SeganyError
from segany.images import decode_image

STAGES = ("load", "encode", "decode", "write")


@dataclass
class RunSummary:
    """What a run did. ``skipped`` lists (image name, reason); ``stage_seconds`` is busy time per stage."""

    total: int
    already_done: int = 0
    labelled: int = 0
    objects: int = 0
    without_prompts: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.skipped else 0

    def lines(self) -> list[str]:
        rate = self.labelled / self.wall_seconds if self.wall_seconds > 0 else 0.0
        out = [
            f"{self.total} images: {self.labelled} labelled now, {self.already_done} already done, "
            f"{len(self.skipped)} skipped; {self.objects} objects in {self.wall_seconds:.1f} s "
            f"({rate:.2f} images/s, {rate * 3600:.0f} images/hour)"
        ]
        busy = sum(self.stage_seconds.values()) or 1.0
        out.append(
            "time per stage (busy seconds, stages overlap): "
            + ", ".join(f"{k} {v:.1f} s ({100 * v / busy:.0f}%)" for k, v in self.stage_seconds.items())
        )
        if self.without_prompts:
            out.append(f"{self.without_prompts} images had no prompts in the prompt source (labelled with no objects)")
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} images (re-run to retry them):")
            out.extend(f"  {name}: {reason}" for name, reason in self.skipped)
        return out

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "already_done": self.already_done,
            "labelled": self.labelled,
            "objects": self.objects,
            "without_prompts": self.without_prompts,
            "skipped": [{"image": n, "reason": r} for n, r in self.skipped],
            "stage_seconds": self.stage_seconds,
            "wall_seconds": self.wall_seconds,
        }


def file_stamp(path) -> list[int]:
    """[size, mtime in ns] of an image file: what tells a resumed run that a name now holds another image."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _same_file(record: dict, item: ImageItem) -> bool:
    """Whether ``record`` was made from the file ``item`` names as it is now (records from before the stamp was
    kept are trusted)."""
    if record.get("source") is None:
        return True
    try:
        return record["source"] == file_stamp(item.path)
    except OSError:
        return False  # gone or unreadable: the load reports it


@dataclass
class _Loaded:
    item: ImageItem
    image: np.ndarray | None = None
    error: str | None = None
    handle: object = None
    stamp: list[int] | None = None


class Annotator:
    """Runs one labelling job.

    Args:
        items: images in output order.
        backend: :class:`~segany.annotate.backends.LocalBackend` or ``ServerBackend``.
        exporter: writes outputs.
        journal: finished-image records (opened by the caller).
        source: prompts per image, or None for "segment everything".
        workers: image loader threads.
        checkpoint_seconds: how often the COCO file is rebuilt during the run.
        progress: show a tqdm progress bar (images/s, ETA) on stderr.
    """

    def __init__(
        self,
        items: list[ImageItem],
        backend,
        exporter: Exporter,
        journal: Journal,
        source: PromptSource | None = None,
        workers: int = 2,
        checkpoint_seconds: float = 30.0,
        progress: bool = True,
    ) -> None:
        self.items = items
        self.backend = backend
        self.exporter = exporter
        self.journal = journal
        self.source = source
        self.workers = max(1, workers)
        self.checkpoint_seconds = checkpoint_seconds
        self.progress = progress
        self._lock = threading.Lock()

    def run(self) -> RunSummary:
        start = time.perf_counter()
        summary = RunSummary(total=len(self.items))
        self.summary = summary
        records: dict[str, dict] = {}
        todo = []
        for item in self.items:
            record = self.journal.load(item.name)
            if record is None or not _same_file(record, item):  # another image under this name: label it anew
                todo.append(item)
            else:
                records[item.name] = record
        summary.already_done = len(records)
        last_checkpoint = time.monotonic()
        bar = self._bar(len(todo))
        try:
            for loaded in self._encoded(todo):
                record = self._finish(loaded)
                if record is not None:
                    records[loaded.item.name] = record
                bar.update(1)
                bar.set_postfix(objects=summary.objects, skipped=len(summary.skipped), refresh=False)
                if time.monotonic() - last_checkpoint >= self.checkpoint_seconds:
                    self._write_coco(records)
                    last_checkpoint = time.monotonic()
        finally:
            bar.close()
            self._write_coco(records)
            summary.wall_seconds = time.perf_counter() - start
            atomic_write(self.journal.state / "last_run.json", json.dumps(summary.to_json(), indent=1))
        return summary

    # ---------------------------------------------------------------------------------------------- stages
    def _timed(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.summary.stage_seconds[stage] += seconds

    def _load(self, item: ImageItem) -> _Loaded:
        t0 = time.perf_counter()
        try:
            stamp = file_stamp(item.path)  # before reading: a file replaced meanwhile is relabelled next time
            image = decode_image(item.path.read_bytes())
            return _Loaded(item, image, stamp=stamp)
        except OSError as exc:
            return _Loaded(item, error=f"cannot read file: {exc.strerror or exc}")
        except SeganyError as exc:
            return _Loaded(item, error=str(exc))
        finally:
            self._timed("load", time.perf_counter() - t0)

    def _loaded(self, items: list[ImageItem]) -> Iterator[_Loaded]:
        """Images decoded by the loader pool, in order, at most ``2 * workers`` ahead."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="segany-load") as pool:
            pending: collections.deque[Future] = collections.deque()
            it = iter(items)
            for item in it:
                pending.append(pool.submit(self._load, item))
                if len(pending) >= 2 * self.workers:
                    break
            while pending:
                yield pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, nxt))

    def _encoded(self, items: list[ImageItem]) -> Iterator[_Loaded]:
        """Loaded images with their encoder output, produced one image ahead by the encoder thread."""
        out: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        done = object()

        def encoder() -> None:
            try:
                for loaded in self._loaded(items):
                    if stop.is_set():
                        return
                    if loaded.error is None:
                        t0 = time.perf_counter()
                        try:
                            loaded.handle = self.backend.encode(loaded.image)
                        except SeganyError as exc:
                            loaded.error = str(exc)
                        self._timed("encode", time.perf_counter() - t0)
                    out.put(loaded)
                out.put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                out.put(exc)

        thread = threading.Thread(target=encoder, name="segany-encode", daemon=True)
        thread.start()
        try:
            while True:
                got = out.get()
                if got is done:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on the full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    thread.join(0.05)

    def _finish(self, loaded: _Loaded) -> dict | None:
        """Decode and write one image; returns its record, or None when it was skipped."""
        name = loaded.item.name
        if loaded.error is not None:
            self.summary.skipped.append((name, loaded.error))
            return None
        prompts = None
        if self.source is not None:
            prompts = self.source.prompts_for(name) or []
            if not prompts:  # not mentioned, or mentioned with no prompts
                self.summary.without_prompts += 1
        t0 = time.perf_counter()
        try:
            objects = self.backend.label(loaded.handle, prompts) if prompts != [] else []
        except SeganyError as exc:
            self.summary.skipped.append((name, str(exc)))
            return None
        finally:
            self._timed("decode", time.perf_counter() - t0)
        t0 = time.perf_counter()
        record = make_record(name, loaded.image.shape[:2], objects)
        record["source"] = loaded.stamp
        self.exporter.write_image_outputs(record, loaded.image)
        self.journal.save(record)
        self._timed("write", time.perf_counter() - t0)
        self.summary.labelled += 1
        self.summary.objects += len(objects)
        return record

    def _write_coco(self, records: dict[str, dict]) -> None:
        t0 = time.perf_counter()
        ordered = [records[i.name] for i in self.items if i.name in records]
        self.exporter.write_coco(ordered)
        self._timed("write", time.perf_counter() - t0)

    def _bar(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, unit="img", desc="annotate", disable=not self.progress, smoothing=0.1)

