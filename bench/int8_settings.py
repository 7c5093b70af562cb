"""Which static-int8 settings keep a model's embeddings closest to its fp32 ONNX export? From one run.

    python bench/int8_settings.py [--model outputs/cpu_real] [--output bench/results/int8_settings.json]

One fp32 export, then one int8 export per setting, all calibrated on the same --calibration_images training
crops (onnx_int8_accuracy.py's specs and draw). Each is compared with fp32 on --fidelity_images other
training crops (another seed; never the evaluated sets): the cosine between the two embeddings of each crop
(mean, 5th percentile, minimum). Settings:
  head_float      every quantizable op of the network, the head from GeM pooling on in float (the export's)
  all_ops         every quantizable op, the head too: the embedding itself rounded to 256 levels
  conv_head_float convolutions only, the head in float
Speed is onnx_speed.py's job; the accuracy of the export's setting on the evaluated sets is
onnx_int8_accuracy.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid, not another install

from bench_common import write_report  # noqa: E402
from onnx_int8_accuracy import CALIBRATION  # noqa: E402
from wildreid.threads import configure_threads  # noqa: E402  (before torch: OpenMP wait policy)

import numpy as np  # noqa: E402

SETTINGS = {
    "head_float": {"keep_head_float": True, "op_types": None},
    "all_ops": {"keep_head_float": False, "op_types": None},
    "conv_head_float": {"keep_head_float": True, "op_types": ["Conv"]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "outputs" / "cpu_real"), help="wildreid model folder")
    parser.add_argument("--calibration_images", type=int, default=128)
    parser.add_argument("--fidelity_images", type=int, default=384)
    parser.add_argument("--data_dir", help="default $WILDREID_DATA")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "int8_settings.json"))
    args = parser.parse_args()
    threads = configure_threads()
    load_before = os.getloadavg()

    from hub_datasets.specs import load_specs
    from wildreid.embedding import load_embedder
    from wildreid.embedding.onnx_runtime import EXPORT_INFO_FILE, GRAPH_HASH_KEY, ONNX_FILE, OnnxEmbedder
    from wildreid.records import file_sha256
    from wildreid.identification.onnx_export import calibration_batches, export_onnx, quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        fp32_folder = export_onnx(args.model, Path(tmp) / "fp32")
        fp32 = load_embedder(str(fp32_folder), runtime="onnx")
        crops = load_specs(CALIBRATION, data_dir=args.data_dir)
        calibration = list(calibration_batches(crops, fp32.processor, images=args.calibration_images))
        fidelity = np.concatenate(list(calibration_batches(crops, fp32.processor, images=args.fidelity_images,
                                                           seed=1)))
        reference = embed(fp32.model, fidelity)
        rows = []
        for name, setting in SETTINGS.items():
            folder = Path(tmp) / name  # the fp32 export's configs beside each int8 graph
            shutil.copytree(fp32_folder, folder, ignore=shutil.ignore_patterns(ONNX_FILE))
            tick = time.perf_counter()
            quantize_int8(fp32_folder / ONNX_FILE, folder / ONNX_FILE, calibration, **setting)
            seconds = time.perf_counter() - tick
            # The copied record describes the fp32 graph; loading checks the graph against it, so record this one.
            record = json.loads((folder / EXPORT_INFO_FILE).read_text())
            record.update({"quantization": "int8", GRAPH_HASH_KEY: file_sha256(folder / ONNX_FILE), "setting": name})
            (folder / EXPORT_INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
            cosines = (embed(OnnxEmbedder(folder), fidelity) * reference).sum(1)
            rows.append({"setting": name, **setting, "quantize_seconds": round(seconds, 1),
                         "mean_cosine": round(float(cosines.mean()), 4),
                         "p5_cosine": round(float(np.percentile(cosines, 5)), 4),
                         "min_cosine": round(float(cosines.min()), 4)})
            print(f"{name:16s} cosine to fp32: mean {rows[-1]['mean_cosine']:.4f}  5th percentile "
                  f"{rows[-1]['p5_cosine']:.4f}  min {rows[-1]['min_cosine']:.4f}", flush=True)
    write_report(args.output, "int8_settings", {
        "model": args.model, "calibration": {"specs": CALIBRATION, "images": args.calibration_images, "seed": 0},
        "fidelity": {"specs": CALIBRATION, "images": args.fidelity_images, "seed": 1},
        "threads": threads, "load_average_before": load_before, "results": rows})


def embed(model, pixels: np.ndarray, batch_size: int = 16) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(pixel_values=torch.from_numpy(pixels[start:start + batch_size])).embeddings
                               .numpy() for start in range(0, len(pixels), batch_size)])


if __name__ == "__main__":
    main()
