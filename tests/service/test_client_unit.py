"""Client pieces that need no server: the public API, conversions, and the status-code -> exception mapping."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import segany.client as client
from segany import errors
from segany.service.proto import segany_pb2 as pb


def test_public_api_is_pinned():
    assert sorted(client.__all__) == sorted([
        "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TIMEOUT", "AsyncClient", "Cancelled", "Client", "DeadlineExceeded",
        "EmbeddedImage", "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "Outputs",
        "PermissionDenied", "ResourceExhausted", "SegmentResult", "ServiceError", "StreamResult", "Unauthenticated",
        "Unavailable", "Unimplemented", "error_from_rpc", "image_source", "make_prompt", "parse_result",
        "segment_request",
    ])
    for name in client.__all__:
        assert hasattr(client, name)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, request_id=None, trailing=False):
        self._code, self._details, self._rid, self._trailing = code, details, request_id, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def initial_metadata(self):
        return (("x-request-id", self._rid),) if self._rid and not self._trailing else ()

    def trailing_metadata(self):
        return (("request_id", "ray-1"), ("x-request-id", self._rid)) if self._rid and self._trailing else ()


@pytest.mark.parametrize("code, cls, base", [
    (grpc.StatusCode.INVALID_ARGUMENT, client.InvalidArgument, errors.InvalidInputError),
    (grpc.StatusCode.NOT_FOUND, client.NotFound, errors.NotFoundError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, client.ResourceExhausted, errors.ResourceExhaustedError),
    (grpc.StatusCode.UNAVAILABLE, client.Unavailable, errors.UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, client.DeadlineExceeded, errors.DeadlineExceededError),
    (grpc.StatusCode.UNAUTHENTICATED, client.Unauthenticated, errors.UnauthenticatedError),
    (grpc.StatusCode.FAILED_PRECONDITION, client.FailedPrecondition, errors.SeganyError),
    (grpc.StatusCode.UNIMPLEMENTED, client.Unimplemented, errors.SeganyError),
    (grpc.StatusCode.INTERNAL, client.Internal, errors.InternalError),
    (grpc.StatusCode.DATA_LOSS, client.Internal, errors.InternalError),
])
def test_status_codes_map_to_typed_errors(code, cls, base):
    exc = client.error_from_rpc(FakeRpcError(code, "what was wrong", "rid-1"))
    assert type(exc) is cls and isinstance(exc, base) and isinstance(exc, client.ServiceError)
    assert exc.code == code and exc.message == "what was wrong" and exc.request_id == "rid-1"


def test_the_request_id_comes_from_initial_or_trailing_metadata():
    """`segany serve` sends it in the initial metadata; Ray Serve's proxy passes only the trailing metadata on."""
    for trailing in (False, True):
        exc = client.error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no", "rid-2", trailing=trailing))
        assert exc.request_id == "rid-2"
    assert client.error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no")).request_id is None


def test_image_sources():
    assert client.image_source(b"\x89PNG").WhichOneof("source") == "image_bytes"
    assert client.image_source("a" * 64).image_id == "a" * 64
    raw = client.image_source(np.zeros((4, 5, 3), np.uint8)).raw
    assert (raw.height, raw.width, raw.channels, len(raw.pixels)) == (4, 5, 3, 60)
    raw16 = client.image_source(np.zeros((4, 5), np.uint16)).raw
    assert (raw16.channels, len(raw16.pixels)) == (3, 60)  # converted to RGB uint8 before sending
    img = client.EmbeddedImage("b" * 64, 4, 5, False, "fp")
    assert client.image_source(img).image_id == "b" * 64
    with pytest.raises(errors.InvalidInputError):
        client.image_source(3.5)


def test_prompts_and_results_round_trip():
    prompt = client.make_prompt([[1, 2], [3, 4]], [1, 0], box=[0, 0, 5, 5], mask_input=np.zeros((256, 256)))
    assert [(p.x, p.y, p.label) for p in prompt.points] == [(1, 2, 1), (3, 4, 0)]
    assert len(prompt.mask_logits) == 256 * 256 * 4 and prompt.box.x1 == 5
    assert client.make_prompt(mask_input="m" + "0" * 32).mask_id == "m" + "0" * 32
    with pytest.raises(errors.InvalidPromptError, match="labels must be 1"):
        client.make_prompt([[1, 2]], [3])
    from segany.masks import encode_rle

    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:5] = True
    rle = encode_rle(mask)
    result = pb.PromptResult(scores=[0.1, 0.9, 0.5], best_index=1)
    c = result.candidates.add(score=0.9, index=1, area=9)
    c.rle.height, c.rle.width, c.rle.counts = 6, 7, rle["counts"].encode()
    c.bbox.extend([2, 1, 2, 2])
    parsed = client.parse_result(result)
    np.testing.assert_array_equal(parsed.masks[0], mask)
    assert parsed.indices.tolist() == [1] and parsed.all_scores.tolist() == pytest.approx([0.1, 0.9, 0.5])
    assert parsed.boxes.tolist() == [[2, 1, 2, 2]] and parsed.best == 0
    # the same mask as uncompressed runs (what the client asks for by default)
    c.rle.counts = b""
    c.rle.runs = np.array([13, 3, 3, 3, 3, 3, 14], "<u4").tobytes()  # columns 2-4 hold rows 1-3
    np.testing.assert_array_equal(client.parse_result(result).masks[0], mask)
    c.rle.runs = c.rle.runs[:-1]
    with pytest.raises(client.Internal, match="not whole uint32"):
        client.parse_result(result)
    c.rle.runs = np.array([13, 3, 3], "<u4").tobytes()  # runs that do not cover the 6x7 mask: the server's fault
    with pytest.raises(client.Internal, match="does not decode"):
        client.parse_result(result)
    assert client.Outputs().to_proto().rle_runs and not client.Outputs(rle_runs=False).to_proto().rle_runs


def test_calls_naming_an_image_id_carry_it_for_ray_routing():
    """Ray Serve's proxy routes by ``multiplexed_model_id`` metadata: every call that names an image id sends it."""
    seen: dict[str, tuple] = {}

    class Stub:
        def __getattr__(self, name):
            def call(request, timeout=None, metadata=()):
                seen[name] = tuple(metadata)
                if name == "Embed":
                    return pb.EmbedResponse(image_id="b" * 64, height=2, width=2)
                if name == "SegmentStream":
                    return iter(())
                if name == "Segment":
                    return pb.SegmentResponse(results=[pb.PromptResult()])
                return pb.ModelInfo()
            return call

    image_id = "a" * 64
    with client.Client("127.0.0.1:1", token="t") as c:
        c._stub = Stub()
        c.embed(image_id)
        c.segment(image_id, points=[[1, 1]], labels=[1])
        list(c.segment_stream([], image=image_id))
        routed = (("authorization", "Bearer t"), ("multiplexed_model_id", image_id))
        assert seen == {"Embed": routed, "Segment": routed, "SegmentStream": routed}
        seen.clear()
        c.embed(b"\x89PNG")  # bytes name no id yet
        c.model_info()
        assert seen == {"Embed": (("authorization", "Bearer t"),), "GetModelInfo": (("authorization", "Bearer t"),)}


def test_wait_ready_falls_back_to_model_info_where_health_is_not_served():
    """Ray Serve's proxy serves no grpc.health.v1: ``wait_ready`` then waits on GetModelInfo's ready flag."""
    answers = iter([pb.ModelInfo(ready=False), pb.ModelInfo(ready=True)])

    class Stub:
        def GetModelInfo(self, request, timeout=None, metadata=()):  # noqa: N802
            return next(answers)

    def unimplemented(*args, **kwargs):
        raise client.Unimplemented("unknown service grpc.health.v1.Health", grpc.StatusCode.UNIMPLEMENTED)

    with client.Client("127.0.0.1:1") as c:
        c._stub, c.health = Stub(), unimplemented
        c.wait_ready(timeout=5)  # returns once ready
        assert next(answers, None) is None

        class NotSegany:
            def GetModelInfo(self, request, timeout=None, metadata=()):  # noqa: N802
                raise FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "unknown service segany.v1.Segany")

        c._stub = NotSegany()
        with pytest.raises(client.Unimplemented):  # neither service: an error at once, not a wait
            c.wait_ready(timeout=5)


def test_async_wait_ready_falls_back_to_model_info_too():
    import asyncio

    answers = iter([pb.ModelInfo(ready=False), pb.ModelInfo(ready=True)])

    class Stub:
        async def GetModelInfo(self, request, timeout=None, metadata=()):  # noqa: N802
            return next(answers)

    async def unimplemented(*args, **kwargs):
        raise client.Unimplemented("unknown service grpc.health.v1.Health", grpc.StatusCode.UNIMPLEMENTED)

    async def main():
        async with client.AsyncClient("127.0.0.1:1") as c:
            c._stub, c.health = Stub(), unimplemented
            await c.wait_ready(timeout=5)

    asyncio.run(main())
    assert next(answers, None) is None


def test_wait_ready_keeps_waiting_through_not_ready_answers_and_names_the_last_one():
    """A Ray app still deploying answers NOT_FOUND, a replica still loading its model can outlast a poll
    (DEADLINE_EXCEEDED): both mean "not yet". At the deadline, the error names the last answer."""
    answers = iter([FakeRpcError(grpc.StatusCode.NOT_FOUND, "Application 'segany' not found"),
                    FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "loading"), pb.ModelInfo(ready=True)])

    class Stub:
        def GetModelInfo(self, request, timeout=None, metadata=()):  # noqa: N802
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

    def unimplemented(*args, **kwargs):
        raise client.Unimplemented("unknown service grpc.health.v1.Health", grpc.StatusCode.UNIMPLEMENTED)

    with client.Client("127.0.0.1:1", retries=0) as c:
        c._stub, c.health = Stub(), unimplemented
        c.wait_ready(timeout=5)
        assert next(answers, None) is None

        class Loading:
            def GetModelInfo(self, request, timeout=None, metadata=()):  # noqa: N802
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "this segany replica could not load its model: x")

        c._stub = Loading()
        with pytest.raises(client.Unavailable, match="could not load its model"):  # the reason survives
            c.wait_ready(timeout=0.3)
