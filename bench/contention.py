"""How much one busy process slows wildreid down: training steps and embedding, alone vs next to a
competitor, with wildreid's thread settings and with the old ones (torch defaults), from one run.

    python bench/contention.py [--output bench/results/contention.json] [--steps 3] [--backbone tf_efficientnet_lite0]

Each measurement runs in a fresh process (the OpenMP wait policy is read once, when torch loads):
  old     torch's defaults: intra-op threads = cores, OpenMP wait policy unset (libgomp spins at barriers)
  new     what train.py / evaluate.py / `wildreid` do: `wildreid.threads` (PASSIVE wait policy, threads from
          the CPU affinity mask, `$WILDREID_NUM_THREADS` honoured)
  new-1   the same with WILDREID_NUM_THREADS=1 (only with --settings; used to choose the default)
"busy" starts one single-threaded spin loop (a stand-in for any other program) before the measurement and
kills it after. Figures: median seconds per training step (`Trainer.train_step`, P x K = 8 x 2, in-memory
batch) and embedding images/s (`WildReIDModel`, batch 16). Ratio = busy / alone (slowdown; target <= 2.5).
Other users of the machine add noise: the JSON records the load average before the run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid, not another install

from bench_common import rewrite_table, write_report  # noqa: E402  (imports wildreid only when it writes: the wait policy stays unset)

SPIN = "while True: pass"
SETTINGS = ("new", "old", "new-1")


def measure(setting: str, backbone: str, image_size: int, steps: int) -> dict:
    """Runs inside the child process: seconds per training step and embedding img/s."""
    wait_policy = os.environ.get("OMP_WAIT_POLICY")  # what libgomp sees when torch loads below
    if setting.startswith("new"):
        from wildreid.threads import configure_threads  # before torch, as the entry points do

        wait_policy = os.environ.get("OMP_WAIT_POLICY")
        configure_threads()
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from train_throughput import write_jpeg_folder

    from modeling_wildreid import WildReIDConfig, WildReIDModel
    from wildreid.training import Trainer, TrainingConfig

    with tempfile.TemporaryDirectory() as tmp:
        write_jpeg_folder(Path(tmp) / "photos", identities=16, per_identity=4, photo_size=256)
        config = TrainingConfig(
            datasets=[f"folder[species=bench]:{Path(tmp) / 'photos'}"], output_dir=str(Path(tmp) / "run"),
            backbone=backbone, backbone_pretrained=False, image_size=image_size, identities_per_batch=8,
            images_per_identity=2, num_workers=0, max_steps=100, warmup_steps=5, save_steps=10**9, log_with="none",
            neck_calibration_images=32,
        )
        trainer = Trainer(config)
        trainer.setup()
        batch = next(iter(trainer.loader))
        trainer.train_step(batch)  # warm-up
        step_times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(batch)
            step_times.append(time.perf_counter() - start)

    model = WildReIDModel(WildReIDConfig(backbone=backbone, image_size=image_size)).eval()
    pixels = torch.randn(16, 3, image_size, image_size)
    embed_times = []
    with torch.inference_mode():
        model(pixel_values=pixels)  # warm-up
        for _ in range(steps):
            start = time.perf_counter()
            model(pixel_values=pixels)
            embed_times.append(time.perf_counter() - start)
    return {"threads": torch.get_num_threads(), "omp_wait_policy": wait_policy,
            "train_step_s": statistics.median(step_times), "embed_img_per_s": 16 / statistics.median(embed_times)}


def run_child(setting: str, busy: bool, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)  # every setting chooses its own threads
    env.pop("WILDREID_NUM_THREADS", None)
    if setting == "new-1":
        env["WILDREID_NUM_THREADS"] = "1"
    competitor = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", setting, "--backbone", args.backbone,
             "--image-size", str(args.image_size), "--steps", str(args.steps)],
            env=env, cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.strip().splitlines()[-1])




def table(report: dict) -> dict:
    """The run as one table (rendered into docs/guides/speed.md by `python -m wildreid.cards`)."""
    rows = []
    for setting, ratio in report["ratios"].items():
        alone, busy = report["results"][f"{setting}/alone"], report["results"][f"{setting}/busy"]
        threads = f"{alone['threads']} thread{'s' * (alone['threads'] != 1)}"
        rows.append([f"{setting} ({threads}, {alone['omp_wait_policy'] or 'wait policy unset'})",
                     f"{alone['train_step_s']:.2f} s", f"{busy['train_step_s']:.2f} s",
                     f"{ratio['train_step_slowdown']:.2f}",
                     f"{alone['embed_img_per_s']:.1f} img/s", f"{busy['embed_img_per_s']:.1f} img/s",
                     f"{ratio['embedding_slowdown']:.2f}"])
    load = ", ".join(f"{x:.2f}" for x in report["load_average_before"])
    return {"columns": ["Setting", "Train step alone", "Train step busy", "Busy / alone", "Embedding alone",
                        "Embedding busy", "Busy / alone (embedding)"], "rows": rows,
            "caption": f"{report['backbone']} at {report['image_size']} px on {report['cpus']} CPUs, median of "
                       f"{report['steps']} training steps (P x K = 8 x 2) and embedding batches of 16, alone and next "
                       f"to one spinning process; load average before the run {load}."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps / embedding batches per run")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "contention.json"))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=["new", "old"])
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--tables-only", action="store_true", help="rebuild the table of --output from its "
                        "measurements, measuring nothing")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.backbone, args.image_size, args.steps)))
        return
    if args.tables_only:
        rewrite_table(args.output, table)
        return

    load_before = os.getloadavg()
    results = {}
    for setting in args.settings:
        for busy in (False, True):
            label = f"{setting}/{'busy' if busy else 'alone'}"
            results[label] = run_child(setting, busy, args)
            print(f"  {label:10s} {results[label]['threads']} threads, wait policy "
                  f"{results[label]['omp_wait_policy'] or 'unset'}: train step {results[label]['train_step_s']:.2f} s, "
                  f"embedding {results[label]['embed_img_per_s']:.1f} img/s", flush=True)
    ratios = {}
    for setting in args.settings:
        alone, busy = results[f"{setting}/alone"], results[f"{setting}/busy"]
        ratios[setting] = {"train_step_slowdown": busy["train_step_s"] / alone["train_step_s"],
                           "embedding_slowdown": alone["embed_img_per_s"] / busy["embed_img_per_s"]}
    print(f"{args.backbone} {args.image_size}px on {os.cpu_count()} CPUs (load average before: "
          + ", ".join(f"{x:.2f}" for x in load_before) + ")")
    for setting in args.settings:
        print(f"  {setting:5s} busy/alone: training step x{ratios[setting]['train_step_slowdown']:.2f} time, "
              f"embedding x{ratios[setting]['embedding_slowdown']:.2f} (target <= 2.5)")
    if {"new", "old"} <= set(args.settings):
        for load in ("alone", "busy"):
            new, old = results[f"new/{load}"], results[f"old/{load}"]
            print(f"  {load}: old/new training step time x{old['train_step_s'] / new['train_step_s']:.2f}, "
                  f"new/old embedding speed x{new['embed_img_per_s'] / old['embed_img_per_s']:.2f}")
    fields = {"backbone": args.backbone, "image_size": args.image_size, "steps": args.steps, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "load_average_before": load_before,
              "results": results, "ratios": ratios}
    write_report(args.output, "contention", {**fields, "table": table(fields)})


if __name__ == "__main__":
    main()
