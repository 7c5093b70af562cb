"""The GPU recipe, checked on a GPU in one command (fits in ~8 minutes on one H100/H200).

    python bench/gpu_check.py [--steps 40] [--output bench/results/gpu_check_<card>.json]
    python bench/gpu_check.py --dry-run          # CPU, tiny backbone, a few steps: checks the plumbing only

Needs only this repository: the photos are generated JPEGs written to a temporary folder. Four parts,
each in its own process (a failure is recorded and the next part still runs); the JSON is rewritten after
each part, so a run cut short keeps what finished:
  train            train.py --config configs/gpu.yaml on the JPEGs for --steps steps (bf16, channels_last)
  train_compile    the same with --compile true (the first steps include the compile warm-up)
  train_throughput bench/train_throughput.py --recipe gpu: wildreid step and end-to-end vs bare timm
  inference        embedding the JPEGs with the trained model (decode, crop, resize, bf16 + channels_last)
--dry-run swaps in tf_efficientnet_lite0 at 64 px, 2 x 2 images per step, no compile (on a CPU torch.compile
only measures the C++ compiler); the JSON then says dry_run: true and its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid, not another install

from wildreid.provenance import code_version  # noqa: E402

DRY_RUN = dict(backbone="tf_efficientnet_lite0", image_size=64, identities_per_batch=2, images_per_identity=2,
               num_workers=0, eval_batch_size=8, neck_calibration_images=16)
# The dry run's parts on one thread: under wildreid's OMP_WAIT_POLICY=PASSIVE, which they inherit, two threads
# spent the tiny bf16 CPU steps waking each other (train_throughput's dry run 76 s on 2 threads, 26 s on 1).
DRY_RUN_THREADS = {"WILDREID_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def write_photos(root: Path, identities: int, per_identity: int, photo_size: int) -> str:
    """Folder-per-individual JPEGs; returns the dataset spec that reads them."""
    from hub_datasets.synthetic import generate_rows

    for row in generate_rows(n_species=1, n_identities=identities, images_per_identity=per_identity,
                             image_size=photo_size, seed=0):
        folder = root / row["identity"].split("/")[-1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / row["image_id"].split("/")[-1]).write_bytes(row["image"]["bytes"])
    return f"folder[species=check]:{root}"


def run_part(command: list[str], timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        outcome = {"returncode": done.returncode, "output_tail": (done.stdout + done.stderr)[-1500:]}
    except subprocess.TimeoutExpired as expired:
        tail = ((expired.stdout or b"") + (expired.stderr or b"")).decode(errors="replace")[-1500:]
        outcome = {"returncode": None, "timed_out_after_s": timeout, "output_tail": tail}
    outcome["command"] = " ".join(command)
    outcome["wall_s"] = round(time.perf_counter() - start, 1)
    return outcome


def train_part(spec: str, output_dir: Path, args, *, compile_model: bool) -> dict:
    overrides = dict(DRY_RUN) if args.dry_run else {}
    overrides.update(datasets=spec, val_datasets="", output_dir=str(output_dir), max_steps=args.steps,
                     warmup_steps=5, save_steps=10**6, log_with="none", compile=str(compile_model).lower())
    if args.dry_run:
        overrides.pop("eval_batch_size")
    command = [sys.executable, "train.py", "--config", "configs/gpu.yaml"]
    for key, value in overrides.items():
        command += [f"--{key}"] + ([] if value == "" else [str(value)])
    outcome = run_part(command, args.part_timeout)
    summary_path = output_dir / "training_summary.json"
    if outcome["returncode"] == 0 and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        outcome.update(steps=summary["total_steps"], images_per_second=summary["images_per_second"])
        resolved = output_dir / "training_config.yaml"
        if resolved.is_file():
            import yaml

            config = yaml.safe_load(resolved.read_text())
            outcome["resolved"] = {key: config.get(key) for key in (
                "backbone", "image_size", "identities_per_batch", "images_per_identity", "mixed_precision",
                "channels_last", "compile", "num_workers", "num_processes")}
    return outcome


def inference_part(spec: str, model_dir: Path, args) -> dict:
    """Embed the JPEGs with the trained model; in a child process like the others."""
    code = (
        "import json, sys, time, torch\n"
        "from hub_datasets.specs import load_specs\n"
        "from wildreid.embedding import embed_dataset, load_embedder\n"
        f"embedder = load_embedder({str(model_dir)!r})\n"
        f"data = load_specs([{spec!r}])\n"
        f"kw = dict(batch_size={args.inference_batch}, num_workers={0 if args.dry_run else 16}, progress=False)\n"
        "embed_dataset(embedder.model, data.select(range(min(len(data), 2 * kw['batch_size']))), embedder.processor, **kw)\n"
        "start = time.perf_counter(); out = embed_dataset(embedder.model, data, embedder.processor, **kw)\n"
        "seconds = time.perf_counter() - start\n"
        "print('RESULT', json.dumps({'images': len(out.indices), 'seconds': seconds, "
        "'images_per_second': len(out.indices) / seconds, 'batch_size': kw['batch_size'], 'num_workers': kw['num_workers']}))\n"
    )
    outcome = run_part([sys.executable, "-c", code], args.part_timeout)
    found = re.search(r"^RESULT (.*)$", outcome["output_tail"], re.MULTILINE)
    if outcome["returncode"] == 0 and found:
        outcome.update(json.loads(found.group(1)))
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps per train.py run")
    parser.add_argument("--identities", type=int, default=64, help="generated individuals (x --per-identity JPEGs)")
    parser.add_argument("--per-identity", type=int, default=8)
    parser.add_argument("--photo-size", type=int, default=512)
    parser.add_argument("--inference-batch", type=int, default=128)
    parser.add_argument("--part-timeout", type=float, default=300, help="seconds before a part is stopped")
    parser.add_argument("--dry-run", action="store_true", help="CPU plumbing check with a tiny backbone")
    parser.add_argument("--output", help="JSON path (default bench/results/gpu_check_<card>.json)")
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.identities, args.per_identity, args.photo_size, args.inference_batch = 2, 6, 4, 96, 8
        os.environ.update(DRY_RUN_THREADS)

    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if not args.dry_run and card == "cpu":
        sys.exit("no CUDA device: this check is for a GPU (use --dry-run to check the plumbing on a CPU)")
    output = Path(args.output or REPO / "bench" / "results" / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', card)}.json")
    report = {"benchmark": "gpu_check", **code_version(), "device": card, "dry_run": args.dry_run,
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "steps": args.steps, "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:]), "parts": {}}

    def record(name: str, outcome: dict) -> None:
        report["parts"][name] = outcome
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        speed = outcome.get("images_per_second") or outcome.get("wildreid_end_to_end_images_per_second")
        status = "ok" if outcome.get("returncode") == 0 else f"FAILED ({outcome.get('returncode')})"
        print(f"{name:17s} {status:12s} {outcome['wall_s']:7.1f} s" + (f"  {speed:8.1f} img/s" if speed else ""),
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        spec = write_photos(root / "photos", args.identities, args.per_identity, args.photo_size)
        report["photos"] = {"images": args.identities * args.per_identity, "side_px": args.photo_size,
                            "generated_in_s": round(time.perf_counter() - start, 1)}
        record("train", train_part(spec, root / "run", args, compile_model=False))
        if args.dry_run:
            report["parts"]["train_compile"] = {"skipped": "dry run on a CPU: torch.compile not exercised"}
        else:
            record("train_compile", train_part(spec, root / "run_compiled", args, compile_model=True))
        throughput_json = root / "throughput.json"
        command = [sys.executable, "bench/train_throughput.py", "--recipe", "gpu", "--output", str(throughput_json),
                   "--photo-size", str(args.photo_size)]
        if args.dry_run:
            command += ["--backbone", DRY_RUN["backbone"], "--image-size", str(DRY_RUN["image_size"]), "--steps", "2",
                        "--warmup", "1", "--num-workers", "0", "--identities-per-batch", "2", "--images-per-identity", "2"]
        outcome = run_part(command, args.part_timeout)
        if outcome["returncode"] == 0 and throughput_json.is_file():
            outcome.update(json.loads(throughput_json.read_text()))
        record("train_throughput", outcome)
        record("inference", inference_part(spec, root / "run", args))
    failed = [name for name, part in report["parts"].items() if "skipped" not in part and part.get("returncode") != 0]
    print(f"wrote {output}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
