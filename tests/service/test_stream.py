"""SegmentStream: a newer prompt for an object supersedes its pending older one; errors stay per request."""

from __future__ import annotations

import threading

import pytest

from segany.client import Client
from tests.service.conftest import ServerThread, png_bytes, random_image


@pytest.fixture()
def gated(tiny_model):
    """A server whose decoder waits for ``gate`` once armed, so the test controls what is pending."""
    srv = ServerThread(tiny_model).start()
    predictor = srv.engine.predictor
    original = predictor.predict_low_res
    srv.gate = threading.Event()
    srv.gate.set()

    def held(*args, **kwargs):
        srv.gate.wait(30)
        return original(*args, **kwargs)

    predictor.predict_low_res = held
    yield srv
    srv.gate.set()
    del predictor.predict_low_res
    srv.stop()


def test_newer_prompt_supersedes_pending_older_one(gated):
    with Client(gated.address, timeout=60) as c:
        img = c.embed(png_bytes(random_image(64, 64, seed=3)))
        gated.gate.clear()
        requests = [
            ("a", {"points": [[10, 10]], "labels": [1]}),  # 0: starts, held in the decoder
            ("a", {"points": [[11, 10]], "labels": [1]}),  # 1: pending, superseded by 2
            ("a", {"points": [[12, 10]], "labels": [1]}),  # 2: pending, superseded by 4
            ("b", {"box": [0, 0, 30, 30]}),                # 3: another object, starts
            ("a", {"points": [[13, 10]], "labels": [1]}),  # 4: the newest for a: computed
        ]
        answers = []
        for answer in c.segment_stream(requests, image=img, multimask=False):
            answers.append(answer)
            if sum(a.superseded for a in answers) == 2:
                gated.gate.set()
    by_sequence = {a.sequence: a for a in answers}
    assert sorted(by_sequence) == [0, 1, 2, 3, 4]
    assert {s for s, a in by_sequence.items() if a.superseded} == {1, 2}
    for s in (0, 3, 4):
        assert by_sequence[s].result is not None and by_sequence[s].result.masks.shape == (1, 64, 64)
    assert by_sequence[3].object_id == "b"
    assert "segany_stream_superseded_total 2" in c_metrics(gated)


def c_metrics(srv) -> str:
    with Client(srv.address) as c:
        return c.metrics()


def test_errors_come_back_per_request_and_the_stream_goes_on(gated):
    with Client(gated.address, timeout=60) as c:
        img = c.embed(png_bytes(random_image(64, 64, seed=4)))
        requests = [
            ("a", {"points": [[10, 10]], "labels": [1]}),
            ("b", {"points": [[1000, 10]], "labels": [1]}),
            ("c", {"box": [40, 40, 10, 10]}),
            ("d", {"points": [[20, 20]], "labels": [1]}),
        ]
        answers = {a.object_id: a for a in c.segment_stream(requests, image=img)}
    assert answers["a"].result is not None and answers["d"].result is not None
    assert answers["b"].error.code.name == "INVALID_ARGUMENT" and "outside the image" in answers["b"].error.message
    assert answers["c"].error.code.name == "INVALID_ARGUMENT" and "box is inverted" in answers["c"].error.message
