"""`livediff img2img` and `livediff txt2img`: single images through the streaming pipeline."""
from __future__ import annotations

import argparse
from pathlib import Path

from livediff.app.commands.options import add_pipeline_options, build_pipeline
from livediff.app.output_paths import image_folder_output, image_output
from livediff.app.pictures import RAISE_WITH_OPTION, picture_size, read_picture
from livediff.errors import InputError


def register(subparsers) -> None:
    img = subparsers.add_parser("img2img", help="restyle one image (or every image in a folder)",
                                description="Restyle images. The input is resized to cover the model size and "
                                            "center-cropped; the output has the model size (512x512 by default; "
                                            "with only --width or --height the other side follows the first "
                                            "input's aspect).")
    img.add_argument("input", help="image file or folder of images")
    img.add_argument("-o", "--output", required=True, help="output image (or folder for a folder input)")
    add_pipeline_options(img)
    img.set_defaults(func=run_img2img, width=None, height=None)

    txt = subparsers.add_parser("txt2img", help="generate images from a prompt")
    txt.add_argument("-o", "--output", required=True, help="output image path")
    txt.add_argument("-n", "--count", type=int, default=1, help="how many images (numbered when > 1)")
    add_pipeline_options(txt, default_t_index="0")
    txt.set_defaults(func=run_txt2img)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _open_image(path: Path, width: int, height: int, max_pixels: int):
    from PIL import ImageOps

    return ImageOps.fit(read_picture(path, max_pixels, how_to_raise=RAISE_WITH_OPTION), (width, height))


def _model_size(args: argparse.Namespace, first: Path) -> None:
    """512x512 unless given; one given side keeps the first input's aspect for the other (and says so)."""
    if not (args.width or args.height):
        args.width, args.height = 512, 512
        return
    if args.width and args.height:
        return
    from livediff.app.video.geometry import complete_size

    size = picture_size(first, args.max_pixels, RAISE_WITH_OPTION)
    args.width, args.height = complete_size(args.width, args.height, *size)
    print(f"livediff: model size {args.width}x{args.height} (the other side follows {first}'s "
          f"{size[0]}x{size[1]} aspect)")


def run_img2img(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not inputs:
            raise InputError(f"folder {str(source)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        out_dir = image_folder_output(args.output)
        outputs = [out_dir / p.name for p in inputs]
    elif source.is_file():
        inputs, outputs = [source], [image_output(args.output)]
    else:
        raise InputError(f"input {args.input!r} does not exist")
    if args.frame_buffer_size != 1:
        raise InputError(f"img2img on files takes one image per call; --frame-buffer-size {args.frame_buffer_size} "
                         f"is for streams")
    for path in inputs:  # an unreadable or too large picture is named before any model loads
        picture_size(path, args.max_pixels, RAISE_WITH_OPTION)
    _model_size(args, inputs[0])
    pipe = build_pipeline(args, "img2img")
    for src, dst in zip(inputs, outputs):
        pipe.reset()
        pipe(_open_image(src, args.width, args.height, args.max_pixels)).save(dst)
        print(dst)
    return 0


def run_txt2img(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise InputError(f"--count {args.count} must be at least 1")
    output = image_output(args.output)
    pipe = build_pipeline(args, "txt2img")
    images = []
    while len(images) < args.count:
        result = pipe()
        images.extend(result if isinstance(result, list) else [result])
    for i, image in enumerate(images[: args.count]):
        path = output if args.count == 1 else output.with_name(f"{output.stem}-{i:03d}{output.suffix}")
        image.save(path)
        print(path)
    return 0
