"""What Ray Serve's proxy costs a click: `segany serve` against the Ray app (segany/service/ray_app.py), side by side.

    python -m benchmarks.bench_ray [--model segany-lite] [--clicks 40]

Starts a local Ray cluster (2 CPUs) with the split application (2 decoding replicas, 1 encoder replica, a local
redis-server on a free port) and a `segany serve` child process, embeds one image through each, then times clicks
(1 point, best mask, RLE runs: the Python client's defaults) interleaved: direct to `segany serve`, through Ray's
proxy with the client's routing metadata, and through Ray's proxy without it (each replica then holds the image
after its first click there). Prints p50/p90 and the ratios. Needs the `ray` and `redis` extras and `redis-server`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_ray.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_service import ServerProcess, _click, _image, _interleaved, _pct, _png  # noqa: E402  (tunes the process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segany-lite")
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--size", default="1200x1800")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    if shutil.which("redis-server") is None:
        print("redis-server not found", file=sys.stderr)
        return 2

    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from segany.client import Client, Outputs, segment_request
    from segany.service.ray_app import SERVICER_FUNCTION, app

    redis_port = _free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    data = _png(_image(h, w, 0))
    model = None if args.model == "segany-lite" else args.model
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        grpc_port = _free_port()
        serve.start(grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER_FUNCTION]),
                    http_options={"host": "127.0.0.1", "port": _free_port()})
        settings = {"num_replicas": 2, "num_cpus": 0.5, "encoder_replicas": 1, "encoder_num_cpus": 0.5,
                    "redis_url": f"redis://127.0.0.1:{redis_port}/0", "torch_threads": 2}
        if model:
            settings["model"] = model
        serve.run(app(settings), name="segany")
        with ServerProcess(args.model, 2) as server, Client(server.address) as direct, \
                Client(f"127.0.0.1:{grpc_port}", timeout=600) as routed:
            img = direct.embed(data)
            assert routed.embed(data).id == img.id
            time.sleep(1.0)  # the replica's routing registration reaches Ray's router

            def unrouted(i: int):  # the raw stub: no multiplexed_model_id metadata
                request = segment_request(img.id, [{"points": _click(i, h, w), "labels": [1]}], True,
                                          Outputs(best_only=True))
                return routed._stub.Segment(request, timeout=600)

            times = _interleaved({
                "segany serve": lambda i: direct.segment(img.id, points=_click(i, h, w), labels=[1], best_only=True),
                "Ray, routed by image id": lambda i: routed.segment(img.id, points=_click(i, h, w), labels=[1],
                                                                    best_only=True),
                "Ray, unrouted": unrouted,
            }, args.clicks)
        base = statistics.median(times["segany serve"])
        print(f"# Ray Serve vs segany serve: model={args.model} image={h}x{w} clicks={args.clicks} "
              f"load={os.getloadavg()[0]:.1f}")
        print("| path | p50 ms | p90 ms | p50 vs segany serve |")
        print("| --- | --- | --- | --- |")
        for name, values in times.items():
            print(f"| {name} | {_pct(values, 50) * 1000:.1f} | {_pct(values, 90) * 1000:.1f} | "
                  f"{statistics.median(values) / base:.2f}x |")
    finally:
        serve.shutdown()
        ray.shutdown()
        redis.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
