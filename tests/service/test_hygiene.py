"""Every bad input gets its status code and a precise message, while a concurrent good client keeps getting masks.

The module's server has small limits so that oversized inputs are cheap to send. A background thread clicks on
a cached image throughout; the last test checks that it never saw an error.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from PIL import Image

from segany.client import Client, make_prompt
from segany.service.proto import segany_pb2 as pb
from segany.service.proto import segany_pb2_grpc as pb_grpc
from tests.service.conftest import ServerThread, jpeg_bytes, png_bytes, random_image
from tests.test_images import encode, png_header_only

LIMITS = dict(max_receive_message_bytes="2MiB", max_image_bytes="1MiB", max_image_pixels=4_000_000,
              max_prompts_per_request=8, max_points_per_prompt=8)


@pytest.fixture(scope="module")
def srv(tiny_model):
    server = ServerThread(tiny_model, **LIMITS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(srv):
    with grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield pb_grpc.SeganyStub(channel)


@pytest.fixture(scope="module")
def image_id(srv):
    with Client(srv.address) as c:
        return c.embed(png_bytes(random_image(64, 80, seed=2))).id


class GoodTraffic:
    def __init__(self, address: str, image_id: str) -> None:
        self.ok = 0
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._client = Client(address, timeout=30)
        self._image_id = image_id
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                res = self._client.segment(self._image_id, points=[[i % 80, i % 64]], labels=[1], best_only=True)
                assert res.masks.shape == (1, 64, 80)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on at the end
                self.errors.append(exc)
            i += 1
            self._stop.wait(0.05)  # steady, not saturating: the point is that it keeps working

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


@pytest.fixture(scope="module")
def good(srv, image_id):
    traffic = GoodTraffic(srv.address, image_id)
    yield traffic
    traffic.stop()


def call(stub, method: str, request):
    try:
        getattr(stub, method)(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""


def embed_bytes(stub, data: bytes):
    return call(stub, "Embed", pb.EmbedRequest(image=pb.ImageSource(image_bytes=data)))


def segment(stub, image_id: str, *prompts: pb.Prompt):
    request = pb.SegmentRequest(image=pb.ImageSource(image_id=image_id), multimask=True)
    request.prompts.extend(prompts)
    return call(stub, "Segment", request)


NOISE = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)

BAD_IMAGES = {
    "truncated": (png_bytes(NOISE)[:900], "PNG image data is truncated or corrupt"),
    "corrupt": (b"GIF89a but not really" + bytes(100), "cannot identify the image format"),
    "not-an-image": (b"\x00" * 64, "cannot identify the image format"),
    "zero-size": (b"", "image is empty (0 bytes)"),
    "zero-width": (png_header_only(0, 16), "image has zero size: 0x16 pixels"),
    "bomb": (png_header_only(40_000, 40_000), "image dimensions refused before decoding"),
    "over-pixel-limit": (png_header_only(3000, 3000), "3000x3000 = 9000000 pixels; at most 4000000 pixels"),
    "over-byte-limit": (b"\x89PNG" + bytes(1_500_000), "image file is 1500004 bytes; at most 1048576 bytes"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_image_bytes(stub, good, name):
    data, message = BAD_IMAGES[name]
    code, details = embed_bytes(stub, data)
    assert code == "INVALID_ARGUMENT", (name, code, details)
    assert message in details, details


def test_oversized_message_is_resource_exhausted(stub, good):
    code, details = embed_bytes(stub, b"\x89PNG" + bytes(3 * 1024 * 1024))
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in details, details


def test_zero_size_raw_pixels(stub, good):
    code, details = call(stub, "Embed", pb.EmbedRequest(image=pb.ImageSource(raw=pb.RawImage(channels=3))))
    assert (code, details) == ("INVALID_ARGUMENT", "raw image has zero size: 0x0")
    raw = pb.RawImage(height=4, width=4, channels=3, pixels=bytes(10))
    code, details = call(stub, "Embed", pb.EmbedRequest(image=pb.ImageSource(raw=raw)))
    assert code == "INVALID_ARGUMENT" and "must be height*width*channels = 48 bytes" in details


def test_accepted_layouts_are_converted(srv, good):
    gray = random_image(40, 50, seed=4)[..., 0]
    deep = (gray.astype(np.uint16) * 257)
    rgba = np.concatenate([random_image(40, 50, seed=4), np.full((40, 50, 1), 200, np.uint8)], axis=2)
    cmyk = Image.fromarray(random_image(40, 50, seed=4)).convert("CMYK")
    with Client(srv.address) as c:
        for data in (png_bytes(gray), encode(deep), png_bytes(rgba), encode(cmyk, "JPEG")):
            img = c.embed(data)
            assert (img.height, img.width) == (40, 50)
            assert c.segment(img, points=[[10, 10]], labels=[1], best_only=True).masks.shape == (1, 40, 50)
        # 16-bit gray and 8-bit gray are the same picture: same pixels after conversion, same masks
        a = c.segment(png_bytes(gray), points=[[25, 20]], labels=[1])
        b = c.segment(encode(deep), points=[[25, 20]], labels=[1])
        np.testing.assert_array_equal(a.masks, b.masks)


def test_exif_rotated_photo_masks_align_with_the_upright_image(srv, good):
    from segany.images import decode_image

    upright = random_image(40, 60, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; a viewer turns it 90 degrees clockwise
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    data = jpeg_bytes(stored, exif=exif.tobytes())
    with Client(srv.address) as c:
        img = c.embed(data)
        assert (img.height, img.width) == (40, 60)  # the upright size
        res = c.segment(img, points=[[50, 10]], labels=[1], box=[30, 0, 59, 30])
        pixels = decode_image(data)
        assert pixels.shape == (40, 60, 3) and np.abs(pixels.astype(int) - upright).mean() < 10
        ref = c.segment(pixels, points=[[50, 10]], labels=[1], box=[30, 0, 59, 30])
        np.testing.assert_array_equal(res.masks, ref.masks)


def _points(*xy_label) -> pb.Prompt:
    return pb.Prompt(points=[pb.Point(x=x, y=y, label=lab) for x, y, lab in xy_label])


BAD_PROMPTS = {
    "nan": (_points((float("nan"), 5, 1)), "prompt 0: points contains NaN or infinite values"),
    "inf": (_points((5, float("inf"), 1)), "prompt 0: points contains NaN or infinite values"),
    "outside": (_points((500, 5, 1)), "prompt 0: point x=500 is outside the image: x must be within [0, 80]"),
    "negative": (_points((5, -40, 1)), "prompt 0: point y=-40 is outside the image"),
    "label": (_points((5, 5, 2)), "prompt 0: labels must be 1 (foreground) or 0 (background), got [2.0]"),
    "inverted-box": (pb.Prompt(box=pb.Box(x0=50, y0=10, x1=20, y1=30)), "prompt 0: box is inverted"),
    "nan-box": (pb.Prompt(box=pb.Box(x0=float("nan"), y0=10, x1=20, y1=30)), "box contains NaN or infinite"),
    "too-many-points": (_points(*[(1, 1, 1)] * 9), "prompt 0: too many points in one prompt: 9, at most 8"),
    "mask-size": (pb.Prompt(mask_logits=bytes(100)), "mask_logits must be 262144 bytes"),
    "empty": (pb.Prompt(), "a prompt needs at least one of: points with labels, a box, a mask_input"),
}


@pytest.mark.parametrize("name", list(BAD_PROMPTS))
def test_bad_prompts(stub, good, image_id, name):
    prompt, message = BAD_PROMPTS[name]
    code, details = segment(stub, image_id, prompt)
    assert code == "INVALID_ARGUMENT", (name, code, details)
    assert message in details, details


def test_too_many_and_no_prompts(stub, good, image_id):
    code, details = segment(stub, image_id, *[_points((1, 1, 1))] * 9)
    assert (code, details) == ("INVALID_ARGUMENT", "too many prompts in one call: 9, at most 8 allowed")
    code, details = segment(stub, image_id)
    assert code == "INVALID_ARGUMENT" and "no prompts given" in details


def test_unknown_and_malformed_ids(stub, good, image_id):
    code, details = segment(stub, "0" * 64, _points((1, 1, 1)))
    assert code == "NOT_FOUND" and "call Embed with the image bytes first" in details
    code, details = segment(stub, "not-an-id", _points((1, 1, 1)))
    assert code == "INVALID_ARGUMENT" and "image_id must be the 64 lowercase hex characters" in details
    code, details = segment(stub, image_id, pb.Prompt(mask_id="m" + "1" * 32))
    assert code == "NOT_FOUND" and "not held any more" in details
    code, details = call(stub, "Segment", pb.SegmentRequest(prompts=[_points((1, 1, 1))]))
    assert code == "INVALID_ARGUMENT" and "no image given" in details
    code, details = call(stub, "Embed", pb.EmbedRequest(image=pb.ImageSource(image_id="0" * 64)))
    assert code == "NOT_FOUND"


def test_client_side_checks_raise_typed_errors_before_sending():
    from segany.errors import InvalidInputError, InvalidPromptError

    with pytest.raises(InvalidPromptError, match="2 points but 1 labels"):
        make_prompt([[1, 1], [2, 2]], [1])
    for points in ([[10, 20, 30, 40]], np.zeros((2, 3)), [[[1, 2]]]):  # never reshaped into other clicks
        with pytest.raises(InvalidPromptError, match=r"points must be \[x, y\]"):
            make_prompt(points, [1, 0])
    assert len(make_prompt([10, 20], [1]).points) == 1  # one bare [x, y] is one click
    with pytest.raises(InvalidInputError, match="image id from embed"):
        from segany.client import image_source

        image_source("photo.jpg")


def test_good_client_never_failed(good):
    assert good.ok > 0
    assert good.errors == []
