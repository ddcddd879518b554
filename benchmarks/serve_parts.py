"""What a served request costs, part by part, on one core: decoding an upload (PIL against
libjpeg-turbo from the bytes), resizing (PIL against PyTorch's uint8 kernel), normalising outside
the model against in its graph, and OpenVINO at a fixed and at a varying batch size, on its
dynamic-shape model against one compiled per batch size.

    PYTHONPATH=src python benchmarks/serve_parts.py CHECKPOINT [--image PHOTO] [--json FILE]

The checkpoint's int8 file (``squeezenet quantize``) is the OpenVINO model where there is one,
else its fp32 ONNX. The image is --image re-encoded as a JPEG of quality 90 (as serve_load.py
sends it), or one from the checkpoint's evaluation data at the model's size. Pinned to the first
core, one thread, as a server worker runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

import squeezenet.data.images as images
from squeezenet.checkpoint import load_checkpoint
from squeezenet.data import normalize
from squeezenet.data.images import decode
from squeezenet.device import cpu_name
from squeezenet.export import onnx_bytes, openvino_model, pixel_input, sample_images, sample_inputs
from squeezenet.runtime import find_int8

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import image_bytes  # noqa: E402


def per_call_us(fn, seconds: float = 1.0) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n * 1e6


def pil_decode(data: bytes, pre) -> np.ndarray:
    """``decode`` as it is where simplejpeg is absent: PIL for every format."""
    fast, images.simplejpeg = images.simplejpeg, None
    try:
        return decode(data, pre.image_size, pre.in_channels, pre.resize_size)
    finally:
        images.simplejpeg = fast


def images_per_s(run, x: np.ndarray, sizes: list[int]) -> float:
    for b in sorted(set(sizes)) * 2:  # every size met twice first: compiled, warm
        run(x[:b])
    t0 = time.perf_counter()
    for b in sizes:
        run(x[:b])
    return sum(sizes) / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--image", help="a photo to decode (default: an evaluation image at the model's size)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    os.sched_setaffinity(0, [sorted(os.sched_getaffinity(0))[0]])
    import torch

    torch.set_num_threads(1)
    model, meta = load_checkpoint(args.checkpoint)
    pre = meta.preprocess
    data, what = image_bytes(meta, args.image)
    assert np.array_equal(pil_decode(data, pre), decode(data, pre.image_size, pre.in_channels, pre.resize_size))
    decoding = {"image": what, "pil_us": per_call_us(lambda: pil_decode(data, pre)),
                "libjpeg_turbo_us": per_call_us(lambda: decode(data, pre.image_size, pre.in_channels, pre.resize_size))}
    batch = [decode(data, pre.image_size, pre.in_channels, pre.resize_size) for _ in range(8)]
    decoding["normalise_us_per_image"] = per_call_us(
        lambda: normalize(torch.from_numpy(np.stack(batch)), pre.mean, pre.std)) / 8
    # what serve does instead: the decoded pixels stacked as they are, normalised in the runtime's graph
    decoding["stack_pixels_us_per_image"] = per_call_us(lambda: np.stack([a.transpose(1, 2, 0) for a in batch])) / 8
    full = simplejpeg.decode_jpeg(data, "rgb" if pre.in_channels == 3 else "gray")
    full = full[..., 0] if pre.in_channels == 1 else full
    size = pre.resize_size or pre.image_size
    w, h = full.shape[1], full.shape[0]
    nw, nh = images.resized(w, h, size)
    im = Image.fromarray(full)
    decoding["resize"] = {"from": f"{w}x{h}", "to": f"{nw}x{nh}",
                          "pil_us": per_call_us(lambda: im.resize((nw, nh), Image.BILINEAR,
                                                                  reducing_gap=images.RESIZE_REDUCING_GAP)),
                          "torch_uint8_us": per_call_us(lambda: images.resize_crop(full, size))}

    int8 = find_int8(args.checkpoint)
    if int8.path is not None:
        source, precision = int8.path, "int8"
    else:
        source, precision = onnx_bytes(model, sample_inputs(meta, 1), dynamic_batch=True, meta=meta), "fp32"
    x = np.repeat(sample_inputs(meta, 1).numpy(), 16, axis=0)
    rng = np.random.default_rng(0)
    patterns = {"fixed 8": [8] * 300, "varying 5-8": rng.integers(5, 9, 300).tolist(),
                "varying 1-16": rng.integers(1, 17, 300).tolist()}
    static = openvino_model(source, precision, threads=1)
    dynamic = static.dynamic  # the same compiled dynamic-shape model, without the per-size ones
    openvino = {name: {"dynamic_img_s": images_per_s(dynamic, x, sizes),
                       "per_size_img_s": images_per_s(static, x, sizes)} for name, sizes in patterns.items()}
    pixels = np.ascontiguousarray(np.repeat(sample_images(meta, 1).permute(0, 2, 3, 1).numpy(), 16, axis=0))
    pixel_model = openvino_model(pixel_input(source, pre.mean, pre.std), precision, threads=1)
    u8 = [a.transpose(2, 0, 1) for a in pixels[:8]]  # as decode returns them
    for _ in range(2):  # the second call compiles batch 8
        pixel_model(pixels[:8])
    openvino["batch 8 from decoded pixels"] = {
        "normalised_outside_us": per_call_us(lambda: static(normalize(torch.from_numpy(np.stack(u8)), pre.mean,
                                                                     pre.std).numpy())),
        "in_graph_us": per_call_us(lambda: pixel_model(np.stack([a.transpose(1, 2, 0) for a in u8])))}
    request = dynamic.compiled.create_infer_request()
    calls = {"infer_us": per_call_us(lambda: request.infer([x[:8]])[0]),
             "tensor_api_us": per_call_us(lambda: dynamic(x[:8]))}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": cpu_name(),
              "checkpoint": args.checkpoint, "openvino_model": precision,
              "decoding": decoding, "openvino": openvino, "openvino_call_batch_8": calls}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
