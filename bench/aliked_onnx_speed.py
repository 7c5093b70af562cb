"""ALIKED extraction on ONNX Runtime vs torch, one CPU thread, 512-px images: does exporting the network pay?

Where the time goes first (torch, per image): the dense part (backbone, upsampled feature concatenation, score
head, L2-normalised 128-channel feature map at full resolution) vs keypoint selection (DKD: NMS, top-k, soft-argmax)
vs descriptor sampling (SDDH at the keypoints). The dense part is exported to ONNX (torch's TorchScript exporter,
opset 17, one fixed input shape: 512 x 512) and run on ONNX Runtime; keypoint selection and descriptor sampling
stay in torch, fed with ONNX Runtime's maps. Both paths take the same resized generated images (no data needed)
and keep the 512 strongest keypoints, as `LocalFeatureExtractor("aliked")` does; they alternate image by image so
both see the same machine load. Parity, per image: the share of torch's keypoints with an ONNX keypoint within
0.01 px, and the largest difference of their float32 descriptor components (tolerance: >= 99 % and <= 1e-3;
float16 storage rounds at ~5e-4). Writes bench/results/aliked_onnx_speed.json (with the git commit).

Issue 30's rule: ONNX Runtime for the extractor only if it is >= 1.5x faster with parity. Measured (4 images x 3
repeats, one thread, on 2 cores shared with other jobs; kornia 0.9.2; see the JSON): n16 0.480 s torch vs 0.478 s
ONNX Runtime per image (1.00x), t16 0.238 vs 0.221 s (1.08x), with wildreid's faster CPU kernels (SELU from `exp`,
torchvision's deformable convolution; on kornia 0.9.0 with an in-place normalisation 0.84x and 0.92x, and with
kornia's module as it came 0.99x and 1.04x). Parity met (every keypoint within 0.01 px, descriptors within 4e-6).
So ONNX Runtime is not wired into the extractor.
The dense part is 80-95 % of torch's time, and torch's profiler puts most of it in memory-bound work over
full-resolution maps (bilinear upsampling, the 128-channel concatenation, the L2 normalisation of a 128 x 512 x 512
map, the deformable convolutions' sampling) rather than in convolutions, work ONNX Runtime does no faster.

    python bench/aliked_onnx_speed.py [--variants n16 t16] [--images 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's wildreid, not another install

from bench_common import limit_threads, write_report  # noqa: E402

limit_threads()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from aliked_speed import patterned_image  # noqa: E402
from wildreid.matching import LocalFeatureExtractor, aliked  # noqa: E402

SIDE = 512
KEYPOINTS = 512
RULE = 1.5  # issue 30: the speed-up ONNX Runtime must bring, with parity, to be wired in
KEYPOINT_TOLERANCE_PX = 0.01
MATCHED_SHARE = 0.99
DESCRIPTOR_TOLERANCE = 1e-3


class DenseMaps(torch.nn.Module):
    """The exported part: image (1, 3, H, W) in [0, 1] -> (feature map (1, D, H, W), score map (1, 1, H, W))."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.extract_dense_map(image)


def export(model: torch.nn.Module, path: Path) -> float:
    """Export `model`'s dense part for SIDE x SIDE images; returns the seconds it took. A copy is exported, with
    kornia's deformable convolutions (torchvision's have no ONNX export): the exporter restores the wrapper's
    training mode afterwards, and a wrapper left in training mode would switch the shared model's BatchNorm to
    batch statistics (every map off by up to 0.8)."""
    wrapper = DenseMaps(aliked.onnx_exportable(model)).eval()
    tick = time.perf_counter()
    torch.onnx.export(wrapper, (torch.rand(1, 3, SIDE, SIDE),), str(path), input_names=["image"],
                      output_names=["features", "scores"], opset_version=17, dynamo=False)
    return time.perf_counter() - tick


def session(path: Path):
    """One-thread ONNX Runtime session whose idle threads sleep (as wildreid's OnnxEmbedder sets it)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def detect_onnx(runtime, model: torch.nn.Module, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`aliked.detect` at one scale with the dense maps from ONNX Runtime: (keypoints (N, 2), descriptors (N, D)
    float32), the KEYPOINTS strongest."""
    height, width = rgb.shape[:2]
    features, scores = runtime.run(None, {"image": rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0})
    with torch.inference_mode():
        keypoints, keypoint_scores, _ = model.dkd(torch.from_numpy(scores))
        descriptors, _ = model.desc_head(torch.from_numpy(features), keypoints)
    order = np.argsort(-keypoint_scores[0].numpy(), kind="stable")[:KEYPOINTS]
    xy = ((keypoints[0].numpy() + 1) / 2 * np.array([width - 1, height - 1], np.float32))[order]
    return xy.astype(np.float32), descriptors[0].numpy()[order]


def parity(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict:
    """Share of the reference keypoints with a keypoint of `other` within KEYPOINT_TOLERANCE_PX, and the largest
    descriptor difference over those pairs."""
    (xy, descriptors), (other_xy, other_descriptors) = reference, other
    distance = np.linalg.norm(xy[:, None] - other_xy[None], axis=2)
    nearest = distance.argmin(axis=1)
    matched = distance[np.arange(len(xy)), nearest] <= KEYPOINT_TOLERANCE_PX
    difference = np.abs(descriptors[matched] - other_descriptors[nearest[matched]]).max() if matched.any() else np.inf
    return {"keypoints": [len(xy), len(other_xy)], "matched_share": float(matched.mean()),
            "max_descriptor_difference": float(difference)}


def time_split(model: torch.nn.Module, rgb: np.ndarray) -> dict[str, float]:
    """Seconds of the dense part, keypoint selection and descriptor sampling of one torch detection."""
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255.0).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        tick = time.perf_counter()
        features, scores = model.extract_dense_map(image)
        dense = time.perf_counter()
        keypoints, _, _ = model.dkd(scores)
        selected = time.perf_counter()
        model.desc_head(features, keypoints)
        sampled = time.perf_counter()
    return {"dense": dense - tick, "keypoint_selection": selected - dense, "descriptor_sampling": sampled - selected}


def measure(variant: str, images: list[np.ndarray], repeats: int, folder: Path) -> dict:
    extractor = LocalFeatureExtractor("aliked", max_keypoints=KEYPOINTS, max_side=SIDE, variant=variant).load()
    settings = extractor.config
    model = aliked.module(settings, KEYPOINTS)
    export_seconds = export(model, folder / f"aliked-{variant}.onnx")
    runtime = session(folder / f"aliked-{variant}.onnx")
    torch_detect = lambda rgb: aliked.detect(model, rgb, settings, KEYPOINTS, np.float32)  # noqa: E731
    onnx_detect = lambda rgb: detect_onnx(runtime, model, rgb)  # noqa: E731
    checks = [parity(torch_detect(rgb), onnx_detect(rgb)) for rgb in images]  # also the warm-up of both
    split = [time_split(model, rgb) for rgb in images]
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    for _ in range(repeats):
        for rgb in images:
            for name, detect in (("torch", torch_detect), ("onnx", onnx_detect)):
                tick = time.perf_counter()
                detect(rgb)
                times[name].append(time.perf_counter() - tick)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    parity_met = all(c["matched_share"] >= MATCHED_SHARE and c["max_descriptor_difference"] <= DESCRIPTOR_TOLERANCE
                     for c in checks)
    row = {"variant": variant, "export_seconds": round(export_seconds, 1),
           "seconds_per_image": {name: round(value, 3) for name, value in seconds.items()},
           "speedup_onnx_over_torch": round(seconds["torch"] / seconds["onnx"], 2),
           "torch_seconds_split": {part: round(statistics.median(s[part] for s in split), 3) for part in split[0]},
           "parity": checks, "parity_met": parity_met}
    print(f"aliked-{variant}: torch {seconds['torch']:.3f} s/image, ONNX Runtime {seconds['onnx']:.3f} s/image "
          f"({row['speedup_onnx_over_torch']:.2f}x; rule >= {RULE}x); torch split {row['torch_seconds_split']}; "
          f"parity {'met' if parity_met else 'NOT met'} (min matched share "
          f"{min(c['matched_share'] for c in checks):.3f}, max descriptor difference "
          f"{max(c['max_descriptor_difference'] for c in checks):.1e})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["n16", "t16"], choices=list(aliked.ALIKED_VARIANTS))
    parser.add_argument("--images", type=int, default=4, help="generated images, each timed --repeats times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "aliked_onnx_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    load_before = os.getloadavg()
    images = [cv2.resize(patterned_image(seed), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
              for seed in range(args.images)]
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(variant, images, args.repeats, Path(folder)) for variant in args.variants]
    pays = all(row["speedup_onnx_over_torch"] >= RULE and row["parity_met"] for row in rows)
    decision = ("wire ONNX Runtime in: >= 1.5x with parity on every variant" if pays else
                "not wired in: ONNX Runtime is not >= 1.5x faster than torch (with parity) on every variant")
    print(decision)
    import onnxruntime

    write_report(args.output, "aliked_onnx_speed", {
        "side": SIDE, "keypoints": KEYPOINTS, "threads": 1, "images": args.images, "repeats": args.repeats,
        "image": f"generated 640x640 RGB resized to {SIDE}x{SIDE}", "rows": rows, "rule": f">= {RULE}x with parity",
        "parity_tolerance": {"keypoint_px": KEYPOINT_TOLERANCE_PX, "matched_share": MATCHED_SHARE,
                             "descriptor_component": DESCRIPTOR_TOLERANCE},
        "decision": decision, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "note": "medians over images x repeats after a warm-up call; the machine was shared with other jobs, so "
                "seconds are upper bounds, the ratios (both runtimes alternating image by image) the finding",
    })


if __name__ == "__main__":
    main()
