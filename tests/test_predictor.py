"""Predictor behaviour that needs no oracle: input layouts, validation errors, statelessness, batching."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import segany
import segany.prompts
from segany.errors import InvalidImageError, InvalidPromptError, ModelMismatchError
from tests.conftest import random_image


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return segany.Predictor(tiny_model, precision="exact")


@pytest.fixture(scope="module")
def emb(predictor):
    return predictor.encode(random_image(120, 200, seed=1))


def test_result_shapes(predictor, emb):
    res = predictor.predict(emb, points=[[50, 60]], labels=[1])
    assert res.masks.shape == (3, 120, 200) and res.masks.dtype == np.bool_
    assert res.scores.shape == (3,) and res.scores.dtype == np.float32
    assert res.low_res_logits.shape == (3, 256, 256)
    single = predictor.predict(emb, box=[10, 10, 100, 90], multimask=False)
    assert single.masks.shape == (1, 120, 200)
    again = predictor.predict(emb, points=[[50, 60]], labels=[1], mask_input=res.low_res_logits[res.best])
    assert again.masks.shape == (3, 120, 200)
    logits = predictor.predict(emb, points=[[50, 60]], labels=[1], return_logits=True)
    assert logits.masks.dtype == np.float32
    np.testing.assert_array_equal(logits.masks > 0, res.masks)


@pytest.mark.parametrize(
    "image",
    [
        np.full((40, 50), 128, np.uint8),
        np.full((40, 50, 1), 128, np.uint8),
        np.full((40, 50, 4), 128, np.uint8),
        np.full((40, 50, 3), 40000, np.uint16),
        np.full((40, 50, 3), 0.5, np.float32),
    ],
    ids=["gray", "gray1", "rgba", "uint16", "float"],
)
def test_accepted_layouts(predictor, image):
    emb = predictor.encode(image)
    assert emb.original_size == (40, 50)


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 10, 3), np.uint8), "zero size"),
        (np.zeros((10, 10, 2), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 3), np.int32), "dtype"),
        (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_rejected_images(predictor, image, match):
    with pytest.raises(InvalidImageError, match=match):
        predictor.encode(image)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(points=[[np.nan, 3]], labels=[1]), "NaN"),
        (dict(points=[[np.inf, 3]], labels=[1]), "NaN or infinite"),
        (dict(points=[[500, 3]], labels=[1]), "outside the image"),
        (dict(points=[[5, -40]], labels=[1]), "outside the image"),
        (dict(points=[[5, 3]], labels=[2]), "labels must be 1"),
        (dict(points=[[5, 3]], labels=[1, 0]), "labels must have shape"),
        (dict(points=[[5, 3]]), "labels are required"),
        (dict(points=[[5, 3, 1]], labels=[1]), r"shape \(N, 2\)"),
        (dict(box=[50, 10, 20, 40]), "inverted"),
        (dict(box=[1, 2, 3]), r"\[x0, y0, x1, y1\]"),
        (dict(mask_input=np.zeros((64, 64))), "mask_input must be low-res logits"),
        (dict(), "at least one of"),
        (dict(points=np.zeros((65, 2)), labels=np.ones(65)), "too many points"),
    ],
)
def test_bad_prompts(predictor, emb, kwargs, match):
    with pytest.raises(InvalidPromptError, match=match):
        predictor.predict(emb, **kwargs)


def test_small_tolerance_outside_border(predictor, emb):
    predictor.predict(emb, points=[[200.5, -0.5]], labels=[1])


def test_embedding_of_another_model_is_refused(predictor):
    other = segany.Predictor(segany.build_model("test-tiny", seed=7), precision="exact")
    foreign = other.encode(random_image(30, 30))
    with pytest.raises(ModelMismatchError, match="encode the image again"):
        predictor.predict(foreign, points=[[5, 5]], labels=[1])


def test_batch_equals_single_calls(predictor, emb):
    boxes = [[10, 10, 100, 90], [0, 0, 199, 119], [60, 20, 150, 110]]
    batch = predictor.predict_batch(emb, boxes=boxes)
    for box, res in zip(boxes, batch):
        single = predictor.predict(emb, box=box, multimask=False)
        np.testing.assert_allclose(res.low_res_logits, single.low_res_logits, atol=1e-5)
    mixed = predictor.predict_prompts(
        emb,
        [
            segany.prompts.make_prompt(emb.original_size, [[5, 5]], [1]),
            segany.prompts.make_prompt(emb.original_size, box=[10, 10, 50, 50]),
            segany.prompts.make_prompt(emb.original_size, [[5, 5], [60, 60]], [1, 0]),
        ],
    )
    assert [r.masks.shape for r in mixed] == [(3, 120, 200)] * 3
    np.testing.assert_allclose(
        mixed[1].low_res_logits, predictor.predict(emb, box=[10, 10, 50, 50]).low_res_logits, atol=1e-5
    )


def test_threads_share_one_predictor(predictor):
    images = [random_image(64 + 8 * i, 96, seed=i) for i in range(4)]
    expected = [predictor.predict(predictor.encode(im), points=[[20, 20]], labels=[1]).low_res_logits for im in images]
    out: dict[int, np.ndarray] = {}

    def work(i):
        out[i] = predictor.predict(predictor.encode(images[i]), points=[[20, 20]], labels=[1]).low_res_logits

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(out[i], expected[i], atol=1e-5)


def test_embedding_container_round_trip(emb):
    from segany.embedding import ImageEmbedding

    back = ImageEmbedding.from_bytes(emb.to_bytes())
    assert back.original_size == emb.original_size and back.input_size == emb.input_size
    np.testing.assert_array_equal(back.image_embeddings.numpy(), emb.image_embeddings.numpy())
    half = ImageEmbedding.from_bytes(emb.to_bytes("float16"))
    assert len(emb.to_bytes("float16")) < 2.1 * 2**20
    np.testing.assert_allclose(half.image_embeddings.numpy(), emb.image_embeddings.numpy(), atol=1e-2, rtol=1e-3)


def test_two_predictors_of_different_precision_cannot_share_a_model():
    from segany.errors import ModelMismatchError

    model = segany.build_model("test-tiny", seed=0)
    image = random_image(40, 50, seed=1)
    exact = segany.Predictor(model, precision="exact")
    embedding = exact.encode(image)
    segany.Predictor(model, precision="fast")  # reconfigures the shared modules
    with pytest.raises(ModelMismatchError, match="has since been configured for 'fast'"):
        exact.encode(image)
    with pytest.raises(ModelMismatchError, match="load a second copy"):
        exact.predict(embedding, points=[[10, 10]], labels=[1])
    segany.Predictor(model, precision="exact")
    assert exact.predict(embedding, points=[[10, 10]], labels=[1]).masks.shape == (3, 40, 50)  # back in step


def test_images_too_narrow_for_the_model_are_invalid_images():
    from segany.errors import InvalidImageError

    predictor = segany.Predictor(segany.build_model("test-tiny", seed=0))
    for shape in [(1, 3000, 3), (3000, 1, 3), (2, 5000, 3)]:
        with pytest.raises(InvalidImageError, match="too narrow for the model"):
            predictor.encode(np.zeros(shape, np.uint8))
    assert predictor.encode(np.zeros((1, 2000, 3), np.uint8)).input_size == (1, 1024)  # up to about 2048:1


def test_prompt_shapes_that_do_not_pair_up_are_invalid_prompts():
    from segany.errors import InvalidPromptError

    predictor = segany.Predictor(segany.build_model("test-tiny", seed=0))
    embedding = predictor.encode(random_image(40, 50, seed=2))
    with pytest.raises(InvalidPromptError, match="2 point sets but 1 label sets"):
        predictor.predict_batch(embedding, points=[[[5, 5]], [[9, 9]]], labels=[[1]])
    with pytest.raises(InvalidPromptError, match="2 point sets but no labels"):
        predictor.predict_batch(embedding, points=[[[5, 5]], [[9, 9]]])
    with pytest.raises(InvalidPromptError, match="single value"):
        predictor.predict(embedding, points=5, labels=[1])
