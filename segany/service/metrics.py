"""A small Prometheus text-format registry: counters, histograms, and gauges read at scrape time.

No client library: the service needs a handful of series and the exposition format is simple. Thread-safe.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable

#: Latency buckets in seconds, from sub-millisecond decodes to multi-second encodes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_fmt_labels(labels)} {_num(value)}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help = name, help_text
        self.buckets = tuple(buckets)
        self._series: dict[Labels, list] = {}  # labels -> [bucket counts..., sum, count]
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            if index < len(self.buckets):
                series[index] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(tuple(sorted(labels.items())))
            return 0 if series is None else series[-1]

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for labels, series in items:
            running = 0
            for bound, n in zip(self.buckets, series):
                running += n
                yield f"{self.name}_bucket{_fmt_labels(labels, (('le', _num(bound)),))} {running}"
            yield f"{self.name}_bucket{_fmt_labels(labels, (('le', '+Inf'),))} {series[-1]}"
            yield f"{self.name}_sum{_fmt_labels(labels)} {_num(series[-2])}"
            yield f"{self.name}_count{_fmt_labels(labels)} {series[-1]}"


class Gauges:
    """Gauges (and counters kept elsewhere) read from a callback at scrape time."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str, str, float]]]) -> None:
        self._read = read  # yields (name, type, help, value)

    def render(self) -> Iterable[str]:
        for name, kind, help_text, value in self._read():
            yield f"# HELP {name} {help_text}"
            yield f"# TYPE {name} {kind}"
            yield f"{name} {_num(value)}"


class Registry:
    def __init__(self) -> None:
        self._items: list = []

    def add(self, item):
        self._items.append(item)
        return item

    def render(self) -> str:
        lines: list[str] = []
        for item in self._items:
            lines.extend(item.render())
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The series the service exports (names documented in docs/service.md)."""

    def __init__(self, read_gauges: Callable[[], Iterable[tuple[str, str, str, float]]]) -> None:
        self.registry = Registry()
        self.requests = self.registry.add(
            Counter("segany_rpc_requests_total", "RPCs finished, by method and status code")
        )
        self.latency = self.registry.add(
            Histogram("segany_rpc_latency_seconds", "RPC wall time from first byte to status, by method")
        )
        self.stages = self.registry.add(
            Histogram("segany_stage_latency_seconds", "time per request stage (hash, cache, decode_image, "
                      "queue_wait, encode, decode), seconds")
        )
        self.superseded = self.registry.add(
            Counter("segany_stream_superseded_total", "SegmentStream requests dropped for a newer one")
        )
        self.registry.add(Gauges(read_gauges))

    def render(self) -> str:
        return self.registry.render()
