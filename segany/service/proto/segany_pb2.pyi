# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbeddingDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_DTYPE_UNSPECIFIED: _ClassVar[EmbeddingDtype]
    EMBEDDING_DTYPE_FLOAT32: _ClassVar[EmbeddingDtype]
    EMBEDDING_DTYPE_FLOAT16: _ClassVar[EmbeddingDtype]
EMBEDDING_DTYPE_UNSPECIFIED: EmbeddingDtype
EMBEDDING_DTYPE_FLOAT32: EmbeddingDtype
EMBEDDING_DTYPE_FLOAT16: EmbeddingDtype

class RawImage(_message.Message):
    __slots__ = ("height", "width", "channels", "pixels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    pixels: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., pixels: _Optional[bytes] = ...) -> None: ...

class ImageSource(_message.Message):
    __slots__ = ("image_bytes", "image_id", "raw")
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    image_bytes: bytes
    image_id: str
    raw: RawImage
    def __init__(self, image_bytes: _Optional[bytes] = ..., image_id: _Optional[str] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("image", "return_embedding", "embedding_dtype")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DTYPE_FIELD_NUMBER: _ClassVar[int]
    image: ImageSource
    return_embedding: bool
    embedding_dtype: EmbeddingDtype
    def __init__(self, image: _Optional[_Union[ImageSource, _Mapping]] = ..., return_embedding: _Optional[bool] = ..., embedding_dtype: _Optional[_Union[EmbeddingDtype, str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("image_id", "height", "width", "cached", "embedding", "model_fingerprint")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    height: int
    width: int
    cached: bool
    embedding: bytes
    model_fingerprint: str
    def __init__(self, image_id: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., cached: _Optional[bool] = ..., embedding: _Optional[bytes] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y", "label")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    label: int
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., label: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("points", "box", "mask_id", "mask_logits")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_LOGITS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    box: Box
    mask_id: str
    mask_logits: bytes
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., mask_id: _Optional[str] = ..., mask_logits: _Optional[bytes] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("rle", "png", "polygons", "bbox", "low_res_logits", "mask_ids", "best_only", "polygon_tolerance", "rle_runs")
    RLE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    LOW_RES_LOGITS_FIELD_NUMBER: _ClassVar[int]
    MASK_IDS_FIELD_NUMBER: _ClassVar[int]
    BEST_ONLY_FIELD_NUMBER: _ClassVar[int]
    POLYGON_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    RLE_RUNS_FIELD_NUMBER: _ClassVar[int]
    rle: bool
    png: bool
    polygons: bool
    bbox: bool
    low_res_logits: bool
    mask_ids: bool
    best_only: bool
    polygon_tolerance: float
    rle_runs: bool
    def __init__(self, rle: _Optional[bool] = ..., png: _Optional[bool] = ..., polygons: _Optional[bool] = ..., bbox: _Optional[bool] = ..., low_res_logits: _Optional[bool] = ..., mask_ids: _Optional[bool] = ..., best_only: _Optional[bool] = ..., polygon_tolerance: _Optional[float] = ..., rle_runs: _Optional[bool] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("image", "prompts", "multimask", "outputs")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MULTIMASK_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    image: ImageSource
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    multimask: bool
    outputs: OutputOptions
    def __init__(self, image: _Optional[_Union[ImageSource, _Mapping]] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., multimask: _Optional[bool] = ..., outputs: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class RleMask(_message.Message):
    __slots__ = ("height", "width", "counts", "runs")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    counts: bytes
    runs: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., counts: _Optional[bytes] = ..., runs: _Optional[bytes] = ...) -> None: ...

class Ring(_message.Message):
    __slots__ = ("xy",)
    XY_FIELD_NUMBER: _ClassVar[int]
    xy: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, xy: _Optional[_Iterable[float]] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("exterior", "holes")
    EXTERIOR_FIELD_NUMBER: _ClassVar[int]
    HOLES_FIELD_NUMBER: _ClassVar[int]
    exterior: Ring
    holes: _containers.RepeatedCompositeFieldContainer[Ring]
    def __init__(self, exterior: _Optional[_Union[Ring, _Mapping]] = ..., holes: _Optional[_Iterable[_Union[Ring, _Mapping]]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("score", "index", "rle", "png", "polygons", "bbox", "low_res_logits", "mask_id", "area")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    LOW_RES_LOGITS_FIELD_NUMBER: _ClassVar[int]
    MASK_ID_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    score: float
    index: int
    rle: RleMask
    png: bytes
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    bbox: _containers.RepeatedScalarFieldContainer[int]
    low_res_logits: bytes
    mask_id: str
    area: int
    def __init__(self, score: _Optional[float] = ..., index: _Optional[int] = ..., rle: _Optional[_Union[RleMask, _Mapping]] = ..., png: _Optional[bytes] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ..., bbox: _Optional[_Iterable[int]] = ..., low_res_logits: _Optional[bytes] = ..., mask_id: _Optional[str] = ..., area: _Optional[int] = ...) -> None: ...

class PromptResult(_message.Message):
    __slots__ = ("scores", "best_index", "candidates")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    BEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    best_index: int
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., best_index: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("image_id", "height", "width", "results")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    height: int
    width: int
    results: _containers.RepeatedCompositeFieldContainer[PromptResult]
    def __init__(self, image_id: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., results: _Optional[_Iterable[_Union[PromptResult, _Mapping]]] = ...) -> None: ...

class SegmentStreamRequest(_message.Message):
    __slots__ = ("object_id", "sequence", "request")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    sequence: int
    request: SegmentRequest
    def __init__(self, object_id: _Optional[str] = ..., sequence: _Optional[int] = ..., request: _Optional[_Union[SegmentRequest, _Mapping]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SegmentStreamResponse(_message.Message):
    __slots__ = ("object_id", "sequence", "superseded", "response", "error")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    sequence: int
    superseded: bool
    response: SegmentResponse
    error: Status
    def __init__(self, object_id: _Optional[str] = ..., sequence: _Optional[int] = ..., superseded: _Optional[bool] = ..., response: _Optional[_Union[SegmentResponse, _Mapping]] = ..., error: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_receive_message_bytes", "max_send_message_bytes", "max_image_bytes", "max_image_pixels", "max_image_side", "max_points_per_prompt", "max_prompts_per_request", "max_encode_queue")
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEND_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_ENCODE_QUEUE_FIELD_NUMBER: _ClassVar[int]
    max_receive_message_bytes: int
    max_send_message_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_image_side: int
    max_points_per_prompt: int
    max_prompts_per_request: int
    max_encode_queue: int
    def __init__(self, max_receive_message_bytes: _Optional[int] = ..., max_send_message_bytes: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_image_side: _Optional[int] = ..., max_points_per_prompt: _Optional[int] = ..., max_prompts_per_request: _Optional[int] = ..., max_encode_queue: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("variant", "fingerprint", "image_size", "embedding_shape", "preprocess", "mask_threshold", "low_res_size", "limits", "decoder_onnx_available", "ready")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LOW_RES_SIZE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DECODER_ONNX_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    variant: str
    fingerprint: str
    image_size: int
    embedding_shape: _containers.RepeatedScalarFieldContainer[int]
    preprocess: str
    mask_threshold: float
    low_res_size: int
    limits: Limits
    decoder_onnx_available: bool
    ready: bool
    def __init__(self, variant: _Optional[str] = ..., fingerprint: _Optional[str] = ..., image_size: _Optional[int] = ..., embedding_shape: _Optional[_Iterable[int]] = ..., preprocess: _Optional[str] = ..., mask_threshold: _Optional[float] = ..., low_res_size: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., decoder_onnx_available: _Optional[bool] = ..., ready: _Optional[bool] = ...) -> None: ...

class GetDecoderOnnxRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DecoderOnnx(_message.Message):
    __slots__ = ("model", "model_fingerprint", "sha256")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model: bytes
    model_fingerprint: str
    sha256: str
    def __init__(self, model: _Optional[bytes] = ..., model_fingerprint: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...
