"""What a training step costs with the backbone's first N stages frozen (`--frozen_backbone_stages N`),
from one run: lite0 at 224 px, P x K = 8 x 2, `Trainer.train_step` on an in-memory batch of generated JPEGs.

    python bench/frozen_stages_step_cost.py [--stages 0 2 3 4] [--steps 5] [--output bench/results/frozen_stages_step_cost.json]

Threads: wildreid's defaults (`--num_threads` / $WILDREID_NUM_THREADS to pin them). Frozen stages skip
their backward pass; the ratio to the unfrozen step is the figure to read (other load on the machine moves
the absolute seconds of all settings alike, since they alternate inside each repeat).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid, not another install

from bench_common import write_report  # noqa: E402
from wildreid.threads import configure_threads  # noqa: E402  (before torch: OpenMP wait policy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num_threads", type=int)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "frozen_stages_step_cost.json"))
    args = parser.parse_args()
    threads = configure_threads(args.num_threads)

    sys.path.insert(0, str(REPO / "bench"))
    from train_throughput import write_jpeg_folder

    from wildreid.training import Trainer, TrainingConfig
    from wildreid.training.normalisation import set_train_modes

    times: dict[int, list[float]] = {stages: [] for stages in args.stages}
    with tempfile.TemporaryDirectory() as tmp:
        write_jpeg_folder(Path(tmp) / "photos", identities=16, per_identity=4, photo_size=256)
        runs = {}
        for stages in args.stages:
            trainer = Trainer(TrainingConfig(
                datasets=[f"folder[species=bench]:{Path(tmp) / 'photos'}"], output_dir=str(Path(tmp) / f"run{stages}"),
                image_size=224, identities_per_batch=8, images_per_identity=2, num_workers=0, max_steps=100,
                warmup_steps=5, log_with="none", neck_calibration_images=32, frozen_backbone_stages=stages))
            trainer.setup()
            batch = next(iter(trainer.loader))
            set_train_modes(trainer.model, False, trainer.backbone_norm, trainer.config.neck_norm,
                            trainer.frozen_parameters)
            trainer.train_step(batch)  # warm-up
            runs[stages] = (trainer, batch)
        for _ in range(args.repeats):
            for stages, (trainer, batch) in runs.items():
                for _ in range(args.steps):
                    start = time.perf_counter()
                    trainer.train_step(batch)
                    times[stages].append(time.perf_counter() - start)
    medians = {stages: statistics.median(values) for stages, values in times.items()}
    base = medians.get(0)
    for stages, seconds in medians.items():
        ratio = f" (x{seconds / base:.2f} of unfrozen)" if base else ""
        print(f"frozen stages {stages}: {seconds:.2f} s per step{ratio}")
    write_report(args.output, "frozen_stages_step_cost", {
        "threads": threads, "median_step_seconds": {str(k): v for k, v in medians.items()},
        "ratio_to_unfrozen": {str(k): v / base for k, v in medians.items()} if base else None})


if __name__ == "__main__":
    main()
