"""Image input and output: decoding user photos, collecting inputs, naming and writing results."""

from bfrboost.io.read import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    InputProblem,
    LoadedImage,
    check_not_input,
    collect_inputs,
    encode_image,
    image_writer,
    output_ext,
    plan_output,
    read_image,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "InputProblem",
    "LoadedImage",
    "check_not_input",
    "collect_inputs",
    "encode_image",
    "image_writer",
    "output_ext",
    "plan_output",
    "read_image",
    "write_image",
]
