"""Batch labelling: images in, COCO / YOLO-seg / PNG labels out, from prompt files or "segment everything".

``segany annotate`` (``segany.cli.annotate``) wires these parts: :mod:`.inputs` (which images), :mod:`.sources`
(prompts per image), :mod:`.backends` (model in process or a server), :mod:`.pipeline` (overlapped stages, progress,
summary), :mod:`.exporters` (output formats) and :mod:`.journal` (atomic writes, resume).
"""
