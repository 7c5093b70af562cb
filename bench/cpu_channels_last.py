"""Memory format on the CPU: channels_last against torch's default (NCHW), float32, measured in one run.

Two figures, each timed alternately in both formats so both see the same machine load:
  training step   `Trainer.train_step` on one in-memory P x K batch, as `wildreid adapt` trains (its recipe: the
                  shipped model as the start, prototype head, frozen stem and first stage), two trainers that differ
                  only in `channels_last`
  embedding       the shipped model's forward on a batch of crops (what `index`, `identify` and evaluation run)
plus parity: the largest difference between the two formats' embeddings and their smallest cosine.
Generated JPEGs (no data needed). Writes bench/results/cpu_channels_last.json (with the commit).

    python bench/cpu_channels_last.py [--steps 8] [--batch 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's wildreid, not another install

from bench_common import write_report  # noqa: E402

import torch  # noqa: E402

from train_throughput import time_steps, write_jpeg_folder  # noqa: E402
from wildreid.embedding.shipped_model import shipped_model  # noqa: E402
from wildreid.identification.adapt_plan import RECIPE  # noqa: E402
from wildreid.training import Trainer, TrainingConfig  # noqa: E402

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per format")
    parser.add_argument("--batch", type=int, default=32, help="crops per embedding batch")
    parser.add_argument("--repeats", type=int, default=6, help="timed embedding batches per format")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (wildreid's default here: the cores)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "cpu_channels_last.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    formats = {"nchw": "false", "channels_last": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpeg_folder(root / "photos", identities=24, per_identity=4, photo_size=320)
        trainers = {}
        for name, flag in formats.items():
            config = TrainingConfig.from_dict({
                **RECIPE, "weight_interpolation": [], "datasets": [f"folder[species=bench]:{root / 'photos'}"],
                "init_from": shipped_model(), "output_dir": str(root / name), "max_steps": 10**6,
                "warmup_steps": 1, "freeze_backbone_steps": 0, "save_steps": 10**9, "log_with": "none",
                "num_workers": 0, "channels_last": flag})
            trainers[name] = Trainer(config)
            trainers[name].setup()
        batch = next(iter(trainers["nchw"].loader))
        step_times = {name: [] for name in formats}
        for trainer in trainers.values():
            time_steps(lambda: trainer.train_step(batch), 2, CPU)  # warm-up
        for _ in range(args.steps):
            for name, trainer in trainers.items():
                step_times[name] += time_steps(lambda: trainer.train_step(batch), 1, CPU)

        model = trainers["nchw"].model.eval()  # the start model with its head: embeddings are its neck's output
        pixels = torch.rand(args.batch, 3, model.config.image_size, model.config.image_size)
        inputs = {"nchw": pixels, "channels_last": pixels.contiguous(memory_format=torch.channels_last)}
        embed_times = {name: [] for name in formats}
        with torch.inference_mode():
            embeddings = {name: model(pixel_values=x).embeddings for name, x in inputs.items()}  # also the warm-up
            for _ in range(args.repeats):
                for name, x in inputs.items():
                    embed_times[name] += time_steps(lambda: model(pixel_values=x), 1, CPU)
    difference = float((embeddings["nchw"] - embeddings["channels_last"]).abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(embeddings["nchw"], embeddings["channels_last"]).min())
    rows = {}
    for what, times, unit in (("training_step", step_times, RECIPE["identities_per_batch"] *
                               RECIPE["images_per_identity"]), ("embedding", embed_times, args.batch)):
        median = {name: statistics.median(values) for name, values in times.items()}
        rows[what] = {"images_per_call": unit, "median_seconds": {k: round(v, 4) for k, v in median.items()},
                      "speedup_channels_last": round(median["nchw"] / median["channels_last"], 2)}
        print(f"{what:14s} NCHW {median['nchw']:.3f} s, channels_last {median['channels_last']:.3f} s "
              f"({median['nchw'] / median['channels_last']:.2f}x)", flush=True)
    print(f"parity: max |difference| {difference:.2e}, min cosine {cosine:.7f}")
    write_report(args.output, "cpu_channels_last", {
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()], **rows,
        "parity": {"max_abs_difference": difference, "min_cosine": cosine},
        "note": "float32 both; steps and batches alternate between the formats; the machine may be shared",
    })


if __name__ == "__main__":
    main()
