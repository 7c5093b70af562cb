"""Training throughput of train.py against a bare timm training step, from one run.

    python bench/train_throughput.py                      # CPU: tf_efficientnet_lite0, 224 px, 8 x 2, channels_last
    python bench/train_throughput.py --recipe gpu         # efficientnetv2_rw_m, 440 px, 16 x 4, bf16, channels_last
    python bench/train_throughput.py --recipe gpu --backbone tf_efficientnet_lite0 --image-size 64 --output r.json

Three figures, same backbone, input size, batch and precision:
  bare timm step     timm `forward_features` + average pool + cosine classifier + cross-entropy + AdamW,
                     on a batch already in memory (the upper bound)
  wildreid step      `Trainer.train_step`: GeM, BN neck, sub-center ArcFace with dynamic margins, clipping,
                     scheduler, Accelerate, on the same in-memory batch
  wildreid end-to-end  `Trainer.run()` reading JPEG files through the data loader (decode, crop, resize,
                     augment) in `--num-workers` processes: what a user gets
The step ratio isolates wildreid's model/optimiser overhead; end-to-end / bare shows whether the loader
keeps up. JPEGs are generated synthetic coats written to a temporary folder (`--photo-size` px).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from hub_datasets.synthetic import generate_rows
from wildreid.training import Trainer, TrainingConfig

RECIPES = {
    "cpu": dict(backbone="tf_efficientnet_lite0", image_size=224, identities_per_batch=8, images_per_identity=2,
                mixed_precision="no", channels_last="true", num_workers=2),
    "gpu": dict(backbone="efficientnetv2_rw_m", image_size=440, identities_per_batch=16, images_per_identity=4,
                mixed_precision="bf16", channels_last="true", num_workers=16),
}


def write_jpeg_folder(root: Path, identities: int, per_identity: int, photo_size: int) -> None:
    """Folder-per-individual JPEGs, the layout users point `folder:` specs at."""
    rows = generate_rows(n_species=1, n_identities=identities, images_per_identity=per_identity,
                           image_size=photo_size, seed=0)
    for row in rows:
        folder = root / row["identity"].split("/")[-1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / row["image_id"].split("/")[-1]).write_bytes(row["image"]["bytes"])


def time_steps(step, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-workers", type=int, help="data-loader processes (default: the recipe's)")
    parser.add_argument("--photo-size", type=int, default=512, help="side of the generated JPEGs")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--backbone", help="override the recipe's backbone (e.g. a tiny one for a dry run)")
    parser.add_argument("--image-size", type=int, help="override the recipe's input size")
    parser.add_argument("--identities-per-batch", type=int, help="override the recipe's P (of P x K)")
    parser.add_argument("--images-per-identity", type=int, help="override the recipe's K (of P x K)")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args()
    recipe = dict(RECIPES[args.recipe])
    if args.num_workers is not None:
        recipe["num_workers"] = args.num_workers
    if args.backbone:
        recipe["backbone"] = args.backbone
    for key in ("image_size", "identities_per_batch", "images_per_identity"):
        if getattr(args, key):
            recipe[key] = getattr(args, key)
    batch = recipe["identities_per_batch"] * recipe["images_per_identity"]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpeg_folder(root / "photos", identities=max(64, batch), per_identity=6, photo_size=args.photo_size)
        end_to_end_steps = args.warmup * 10 + args.steps * 2
        config = TrainingConfig(
            datasets=[f"folder[species=bench]:{root / 'photos'}"], output_dir=str(root / "run"), backbone_pretrained=False,
            max_steps=end_to_end_steps, save_steps=10**9, warmup_steps=5, log_with="none", compile=args.compile,
            **recipe,
        )
        trainer = Trainer(config)
        trainer.setup()
        device = trainer.accelerator.device
        fixed = next(iter(trainer.loader))
        fixed = {k: v.to(device) if torch.is_tensor(v) else v for k, v in fixed.items()}

        # The bare timm baseline, on the same device, batch, precision and memory format.
        bare = timm.create_model(recipe["backbone"], pretrained=False, num_classes=0, global_pool="").to(device)
        num_classes = trainer.model.config.num_identities
        head = torch.nn.Parameter(torch.randn(num_classes, bare.num_features, device=device) * 0.01)
        channels_last = recipe["channels_last"] == "true"
        if channels_last:
            bare = bare.to(memory_format=torch.channels_last)
        bare_step_model = torch.compile(bare) if args.compile else bare
        optimizer = torch.optim.AdamW(list(bare.parameters()) + [head], lr=1e-4)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe["mixed_precision"] == "bf16")
        pixels = trainer.processor.normalize(fixed["pixel_values"])
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        labels = fixed["labels"]

        def bare_step():
            with autocast:
                features = bare_step_model.forward_features(pixels).mean(dim=(-2, -1))
                logits = 30.0 * F.linear(F.normalize(features.float()), F.normalize(head))
                loss = F.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def wildreid_step():
            trainer.train_step(fixed)

        time_steps(bare_step, args.warmup, device)
        time_steps(wildreid_step, args.warmup, device)
        bare_times, wildreid_times = [], []
        for _ in range(args.steps):  # alternate so both see the same machine load
            bare_times += time_steps(bare_step, 1, device)
            wildreid_times += time_steps(wildreid_step, 1, device)

        summary = Trainer(replace(config, output_dir=str(root / "run_end_to_end"))).run()  # a run folder of its own

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    bare_speed = batch / statistics.median(bare_times)
    step_speed = batch / statistics.median(wildreid_times)
    end_to_end = summary["images_per_second"]
    print(f"{recipe['backbone']} {recipe['image_size']}px, batch {batch}, {recipe['mixed_precision']} precision, "
          f"channels_last={channels_last}, compile={args.compile}, {recipe['num_workers']} loader workers, on {device_name}")
    print(f"  bare timm step           {bare_speed:8.1f} img/s")
    print(f"  wildreid step            {step_speed:8.1f} img/s   ratio to bare {step_speed / bare_speed:.3f} (target >= 0.95)")
    print(f"  wildreid end-to-end      {end_to_end:8.1f} img/s   ratio to bare {end_to_end / bare_speed:.3f}"
          f"   (JPEG {args.photo_size}px -> decode, crop, resize, augment)")
    if args.output:
        Path(args.output).write_text(json.dumps({
            "recipe": args.recipe, **recipe, "batch": batch, "compile": args.compile, "device": device_name,
            "bare_timm_images_per_second": bare_speed, "wildreid_step_images_per_second": step_speed,
            "wildreid_end_to_end_images_per_second": end_to_end, "step_ratio_to_bare": step_speed / bare_speed,
            "end_to_end_ratio_to_bare": end_to_end / bare_speed,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
