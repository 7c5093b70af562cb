"""Inference overhead of WildReIDModel over the bare timm backbone on the same input, from one run.

Baseline: `timm.create_model(backbone).forward_features` + global average pooling (what a user of bare
timm would write). wildreid adds GeM, the BatchNorm neck and L2 normalisation on top.

    python bench/embed_overhead.py [--backbone tf_efficientnet_lite0] [--image-size 224] [--batch-size 8]

Timings alternate between the two models so both see the same machine load; the ratio uses medians.
Both run in channels_last, and in bf16 autocast on a GPU, as `embed_dataset` runs wildreid.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.embedding.loop import inference_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    wildreid = WildReIDModel(WildReIDConfig(backbone=args.backbone, image_size=args.image_size)).eval()
    bare = timm.create_model(args.backbone, pretrained=False, num_classes=0, global_pool="").eval()
    bare.load_state_dict(wildreid.backbone.state_dict())
    autocast, memory_format = inference_settings(device)  # as embed_dataset runs the model
    wildreid.to(device, memory_format=memory_format)
    bare.to(device, memory_format=memory_format)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    pixels = pixels.contiguous(memory_format=memory_format)

    def run_wildreid():
        return wildreid(pixel_values=pixels).embeddings

    def run_bare():
        return bare.forward_features(pixels).mean(dim=(-2, -1))

    times = {"wildreid": [], "bare timm": []}
    with torch.inference_mode(), autocast:
        for _ in range(3):  # warm-up: allocator, cuDNN autotuning
            run_wildreid(), run_bare()
        for _ in range(args.repeats):
            for name, fn in (("wildreid", run_wildreid), ("bare timm", run_bare)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.backbone} {args.image_size}px batch {args.batch_size} on {device_name}, median of {args.repeats}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"  {name:10s} {seconds * 1000:8.1f} ms/batch  {args.batch_size / seconds:8.1f} img/s")
    print(f"  ratio wildreid / bare timm time: {medians['wildreid'] / medians['bare timm']:.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()
