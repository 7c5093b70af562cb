"""Embedding speed: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, on the same real images, from one run.

    python bench/onnx_speed.py [--images 16] [--repeats 3] [--output bench/results/onnx_speed.json]

Models (random init except lite0's ImageNet weights; speed does not depend on the weights):
  tf_efficientnet_lite0 at 224 px   the CPU recipe's backbone
  tf_efficientnetv2_s at 384 px     a v2 backbone at MiewID-like resolution
Each is exported with `wildreid.onnx_export.export_onnx` (int8: static QDQ, calibrated on 32 lion:train
crops). Inputs are lion:val crops preprocessed once by the model's image processor; batch 1 (images one by
one) and batch 16; torch gets them in channels_last, as `embed_dataset` feeds it. Runtimes alternate inside
each repeat so all see the same machine load; figures are medians. Threads: wildreid's defaults for both torch and ONNX Runtime (`wildreid.threads`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid, not another install

from bench_common import rewrite_table, write_report  # noqa: E402
from wildreid.threads import configure_threads  # noqa: E402  (before torch: OpenMP wait policy)

MODELS = [("tf_efficientnet_lite0", 224, True), ("tf_efficientnetv2_s", 384, False)]
BATCH_SIZES = (1, 16)




def table(report: dict) -> dict:
    """The run as one table (rendered into docs/guides/onnx.md by `python -m wildreid.cards`)."""
    rows = [[f"{row['backbone']}, {row['image_size']} px", row["batch_size"],
             f"{row['images_per_second']['torch']:.1f}"]
            + [f"{row['images_per_second'][name]:.1f} ({row['ratio_to_torch'][name]:.2f}x)" for name in ("onnx_fp32", "onnx_int8")]
            for row in report["results"]]
    load = ", ".join(f"{x:.2f}" for x in report["load_average_before"])
    return {"columns": ["Model", "Batch", "torch (img/s)", "ORT fp32 (img/s, x torch)", "ORT int8 (img/s, x torch)"],
            "rows": rows, "caption": f"Median of {report['repeats']} repeats over {report['images']} lion:val crops, "
                                     f"{report['threads']} threads on {report['cpus']} CPUs (load average before the "
                                     f"run {load}); torch {report['torch']}, onnxruntime {report['onnxruntime']}."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="lion:val crops timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data_dir", help="default $WILDREID_DATA")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "onnx_speed.json"))
    parser.add_argument("--tables-only", action="store_true", help="rebuild the table of --output from its "
                        "measurements, measuring nothing")
    args = parser.parse_args()
    if args.tables_only:
        rewrite_table(args.output, table)
        return
    threads = configure_threads()
    load_before = os.getloadavg()

    import torch

    from hub_datasets.specs import load_specs
    from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor, WildReIDModel
    from wildreid.embedding.loop import inference_settings
    from wildreid.embedding.onnx_runtime import OnnxEmbedder
    from wildreid.identification.onnx_export import calibration_batches, export_onnx

    queries = load_specs(["lion:val"], data_dir=args.data_dir)
    calibration_set = load_specs(["lion:train"], data_dir=args.data_dir)
    results = []
    for backbone, size, pretrained in MODELS:
        torch.manual_seed(0)
        config = WildReIDConfig(backbone=backbone, image_size=size)
        model = (WildReIDModel.with_imagenet_backbone(config) if pretrained else WildReIDModel(config)).eval()
        processor = WildReIDImageProcessor.from_config(model.config)
        batches = list(calibration_batches(queries, processor, images=args.images, batch_size=args.images, seed=1))
        pixels = torch.from_numpy(batches[0])
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(Path(tmp) / "model")
            export_onnx(str(Path(tmp) / "model"), Path(tmp) / "fp32")
            export_onnx(str(Path(tmp) / "model"), Path(tmp) / "int8", quantize="int8",
                        calibration=calibration_batches(calibration_set, processor, images=32, batch_size=8))
            runtimes = {"torch": model, "onnx_fp32": OnnxEmbedder(Path(tmp) / "fp32"),
                        "onnx_int8": OnnxEmbedder(Path(tmp) / "int8")}
            memory_format = inference_settings(torch.device("cpu"))[1]
            for batch_size in BATCH_SIZES:
                chunks = list(torch.split(pixels, batch_size))
                inputs = {name: [chunk.contiguous(memory_format=memory_format) for chunk in chunks]
                          if name == "torch" else chunks for name in runtimes}
                times = {name: [] for name in runtimes}
                with torch.inference_mode():
                    for name, runtime in runtimes.items():
                        runtime(pixel_values=inputs[name][0])  # warm-up
                    for _ in range(args.repeats):
                        for name, runtime in runtimes.items():
                            start = time.perf_counter()
                            for chunk in inputs[name]:
                                runtime(pixel_values=chunk)
                            times[name].append(time.perf_counter() - start)
                speed = {name: len(pixels) / statistics.median(t) for name, t in times.items()}
                row = {"backbone": backbone, "image_size": size, "batch_size": batch_size, "images_per_second": speed,
                       "ratio_to_torch": {name: speed[name] / speed["torch"] for name in speed}}
                results.append(row)
                print(f"{backbone} {size}px batch {batch_size:2d}: torch {speed['torch']:6.1f} img/s | "
                      f"ORT fp32 {speed['onnx_fp32']:6.1f} (x{row['ratio_to_torch']['onnx_fp32']:.2f}, target >= 1.5) | "
                      f"ORT int8 {speed['onnx_int8']:6.1f} (x{row['ratio_to_torch']['onnx_int8']:.2f}, target >= 2.5)",
                      flush=True)
    fields = {"threads": threads, "cpus": os.cpu_count(), "load_average_before": load_before, "images": args.images,
              "repeats": args.repeats, "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
              "results": results}
    write_report(args.output, "onnx_speed", {**fields, "table": table(fields)})


if __name__ == "__main__":
    main()
