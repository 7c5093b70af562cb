"""Hostile and unlucky inputs (issue 16, and issue 34's in bench/bad_inputs_user_files.py), run against the
command lines on small generated data.

    python bench/bad_inputs.py [--output results.json] [--keep DIR]

Every case runs the real CLI in a subprocess (train.py, evaluate.py, `wildreid index | identify`,
`python -m hub_datasets.publish`) and checks the outcome it should have: a refusal with a message naming
the file, row or flag (exit code 2 or 1, no traceback), or, for faults (kill -9 between gallery files or
publish shards, a second writer), a folder that is still the old or the new version. Prints one line per
case, `case -> outcome`, and exits non-zero if any case is not handled. Images are generated (random
pixels, a 30000 x 30000 PNG bomb of 110 KB); nothing reads real data. A few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bad_input_tools import (KILL_AT, REPO, TINY_TRAINING, Outcome, cli, refused, run, save_model, write_images,
                             write_png_bomb)
from bad_inputs_user_files import USER_FILE_CASES, UserFileCases


class Cases:
    def __init__(self, work: Path):
        self.work = work
        self.images = write_images(work / "zebras")
        self.model = save_model(work / "model_a", seed=0)
        self.other_model = save_model(work / "model_b", seed=1)

    # 1. one CSV row with a 100000 px rotated box
    def huge_rotated_box_in_csv(self) -> Outcome:
        csv = self.work / "zebras" / "huge_box.csv"
        csv.write_text("image,identity,bbox,theta\nind0/0.png,ind0,0 0 64 64,0\nind0/1.png,ind0,0 0 100000 100000,0.5\n")
        return refused(run(["train.py", "--datasets", f"csv:{csv}", "--max_steps", "1", "--output_dir",
                            str(self.work / "run_box"), *TINY_TRAINING]), "line 3", "bbox")

    def huge_rotated_box_in_the_processor(self) -> Outcome:
        script = ("import resource; from PIL import Image; from modeling_wildreid import WildReIDImageProcessor; "
                  "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize(); "
                  "resource.setrlimit(resource.RLIMIT_AS, (used + 1_500_000_000, resource.RLIM_INFINITY)); "
                  "crop = WildReIDImageProcessor(image_size=64).crop(Image.new('RGB', (640, 480)), "
                  "[0, 0, 100000, 100000], 0.5); print(*crop.size)")
        done = run(["-c", script])
        ok = done.returncode == 0 and np.prod([int(v) for v in done.stdout.split()]) <= 4 * 640 * 480
        return Outcome(ok, f"crop {done.stdout.strip()} px under a 1.5 GB memory limit" if ok else done.stderr[-200:])

    # 2. a decompression bomb inside a dataset
    def bomb_in_folder_index(self) -> Outcome:
        folder = write_images(self.work / "bombed")
        write_png_bomb(folder / "ind1" / "bomb.png")
        self.bombed = folder
        return refused(run(cli("index", "--model", str(self.model), "--datasets", f"folder:{folder}", "--output",
                               str(self.work / "g_bomb"), "--num_workers", "0")), "bomb.png", "too many pixels")

    def bomb_in_csv_training(self) -> Outcome:
        csv = self.bombed / "labels.csv"
        csv.write_text("image,identity\nind0/0.png,ind0\nind1/bomb.png,ind1\n")
        return refused(run(["train.py", "--datasets", f"csv:{csv}", "--max_steps", "1", "--output_dir",
                            str(self.work / "run_bomb"), *TINY_TRAINING]), "line 3", "bomb.png", "too many pixels")

    # 3. galleries: kill -9 between file writes of `index --overwrite`, a second writer, paths
    def index(self, model: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
        return run(cli("index", "--model", str(model), "--datasets", f"folder:{self.images}", "--output", str(output),
                       "--num_workers", "0", *extra))

    def self_score(self, gallery: Path, cwd: Path = REPO) -> tuple[float, subprocess.CompletedProcess]:
        query = self.images / "ind0" / "0.png"
        done = run(cli("identify", "--gallery", str(gallery), "--images", str(query), "--top_k", "1"), cwd=cwd)
        score = float(done.stdout.split("top score ")[1].split(";")[0]) if "top score" in done.stdout else float("nan")
        return score, done

    def killed_reindex_leaves_old_or_new(self) -> Outcome:
        gallery = self.work / "g_kill"
        assert self.index(self.model, gallery, "--overwrite").returncode == 0
        killed = run(["-c", KILL_AT, "pandas:DataFrame.to_parquet", "0", "wildreid.identification.cli", "index",
                      "--model", str(self.other_model), "--datasets", f"folder:{self.images}", "--output", str(gallery),
                      "--num_workers", "0", "--overwrite"])
        score, done = self.self_score(gallery)  # the gallery's own model answers: a query's own image scores 1
        ok = killed.returncode == -9 and done.returncode == 0 and abs(score - 1.0) < 1e-4
        return Outcome(ok, f"killed (rc {killed.returncode}) between embeddings and metadata; identify: own image "
                           f"scores {score:.4f} (old gallery intact)")

    def concurrent_index_refused(self) -> Outcome:
        gallery = self.work / "g_busy"
        assert self.index(self.model, gallery, "--overwrite").returncode == 0
        holder = subprocess.Popen([sys.executable, "-c", "import sys; from filelock import FileLock; "
                                   f"lock = FileLock({str(gallery / '.gallery.lock')!r}, timeout=0); lock.acquire(); "
                                   "print('held', flush=True); sys.stdin.read()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            holder.stdout.readline()
            start = time.monotonic()
            outcome = refused(self.index(self.other_model, gallery, "--overwrite"), "being written by another process")
            outcome.text += f" ({time.monotonic() - start:.1f} s)"
        finally:
            holder.stdin.close()
            holder.wait()
        return outcome

    def identify_from_another_directory(self) -> Outcome:
        gallery = self.work / "galleries" / "g_rel"
        done = run(cli("index", "--model", "model_a", "--datasets", f"folder:{self.images}", "--output",
                       str(gallery), "--num_workers", "0", "--overwrite"), cwd=self.work)  # model relative to the cwd
        elsewhere = self.work / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        score, identified = self.self_score(gallery, cwd=elsewhere)
        stored = json.loads((gallery / "gallery.json").read_text())["model"]["model_name_or_path"]
        ok = done.returncode == 0 and identified.returncode == 0 and abs(score - 1.0) < 1e-4
        return Outcome(ok, f"stored model {stored!r}; identify from another folder: own image scores {score:.4f}"
                       if ok else identified.stderr[-200:])

    # 4. code planted in a checkpoint folder
    def planted_pickle_on_resume(self) -> Outcome:
        out = self.work / "run_pickle"
        common = ["train.py", "--datasets", f"folder:{self.images}", "--min_images_per_identity", "2",
                  "--output_dir", str(out), *TINY_TRAINING]
        first = run([*common, "--max_steps", "1"])
        assert first.returncode == 0, first.stderr[-2000:]
        marker = self.work / "pwned"
        plant = ("import pathlib, sys, torch\nclass P:\n    def __reduce__(self):\n"
                 f"        return (pathlib.Path.write_text, (pathlib.Path({str(marker)!r}), 'code ran'))\n"
                 "torch.save(P(), sys.argv[1])")
        assert run(["-c", plant, str(out / "checkpoints" / "checkpoint-1" / "custom_checkpoint_0.pkl")]).returncode == 0
        outcome = refused(run([*common, "--max_steps", "2", "--resume_from_checkpoint", "latest"]),
                          "custom_checkpoint_0.pkl")
        outcome.handled &= not marker.exists()
        outcome.text = f"payload not run (marker absent: {not marker.exists()}); {outcome.text}"
        return outcome

    # 5. kill -9 during publish
    def killed_publish_invisible(self) -> Outcome:
        out = self.work / "published"
        killed = run(["-c", KILL_AT, "datasets:Dataset.to_parquet", "1", "hub_datasets.publish", "--species",
                      "synthetic", "--output_dir", str(out)])
        check = ("import sys, datasets; from datasets import load_dataset\n"
                 "try:\n    print(len(load_dataset(sys.argv[1], split='train')))\n"
                 "except Exception as error:\n    print('refused', type(error).__name__)")
        partial = run(["-c", check, str(out)], env={"HF_DATASETS_CACHE": str(self.work / "cache")})
        rerun = run(["-m", "hub_datasets.publish", "--species", "synthetic", "--output_dir", str(out)])
        full = run(["-c", check.replace("split='train'", "'synthetic', split='train'"), str(out)],
                   env={"HF_DATASETS_CACHE": str(self.work / "cache2")})
        ok = killed.returncode == -9 and partial.stdout.startswith("refused") and rerun.returncode == 0 \
            and full.stdout.strip().isdigit()
        return Outcome(ok, f"after kill -9: load_dataset(dir) {partial.stdout.strip()}; rerun publishes "
                           f"{full.stdout.strip()} train rows")

    def publish_into_a_file(self) -> Outcome:
        target = self.work / "a_file"
        target.write_text("x")
        return refused(run(["-m", "hub_datasets.publish", "--species", "synthetic", "--output_dir", str(target)]),
                       str(target), "is a file")

    # 6. step counts
    def max_steps_zero(self) -> Outcome:
        return refused(run(["train.py", "--datasets", "synthetic", "--max_steps", "0", "--output_dir",
                            str(self.work / "run0")]), "--max_steps must be an integer >= 1")

    def max_steps_negative(self) -> Outcome:
        return refused(run(["train.py", "--datasets", "synthetic", "--max_steps", "-3", "--output_dir",
                            str(self.work / "run0")]), "--max_steps must be an integer >= 1")

    # 7. weaker messages
    def unclosed_spec(self) -> Outcome:
        return refused(run(["train.py", "--datasets", "csv[", "--max_steps", "1", "--output_dir",
                            str(self.work / "run0")]), "closed by ']'")

    def output_dir_is_a_file(self) -> Outcome:
        target = self.work / "a_file"
        target.write_text("x")
        return refused(run(["train.py", "--datasets", "synthetic[images_per_identity=1000]", "--max_steps", "1",
                            "--output_dir", str(target)]), str(target), "is a file")

    def corrupted_weights(self) -> Outcome:
        broken = self.work / "model_broken"
        save_model(broken, seed=2)
        (broken / "model.safetensors").write_bytes(b"\xff" * 100)
        return refused(run(cli("index", "--model", str(broken), "--datasets", f"folder:{self.images}", "--output",
                               str(self.work / "g_broken"))), str(broken / "model.safetensors"))

    def evaluate_output_under_a_file(self) -> Outcome:
        target = self.work / "a_file"
        start = time.monotonic()
        outcome = refused(run(["evaluate.py", "--model", str(self.model), "--datasets",
                               "synthetic[images_per_identity=1000]", "--output", str(target / "results.json")]),
                          str(target), "is a file")
        outcome.text += f" ({time.monotonic() - start:.1f} s, before evaluating)"
        return outcome

    def missing_model_folder(self) -> Outcome:
        outcome = refused(run(["evaluate.py", "--model", "/no/such/folder", "--datasets", "synthetic"]),
                          "/no/such/folder: no such folder")
        return outcome

    def huge_synthetic_spec(self) -> Outcome:
        start = time.monotonic()
        outcome = refused(run(["train.py", "--datasets", "synthetic[images_per_identity=1000000000]", "--max_steps",
                               "1", "--output_dir", str(self.work / "run0")], timeout=120), "images_per_identity <= 1000")
        outcome.text += f" ({time.monotonic() - start:.1f} s)"
        return outcome


CASES: list[tuple[str, str, Callable[[Cases], Outcome]]] = [
    ("1", "CSV row: 100000 px box, theta 0.5 (train.py)", Cases.huge_rotated_box_in_csv),
    ("1", "processor: 100000 px rotated box", Cases.huge_rotated_box_in_the_processor),
    ("2", "PNG bomb in a folder dataset (wildreid index)", Cases.bomb_in_folder_index),
    ("2", "PNG bomb in a CSV dataset (train.py)", Cases.bomb_in_csv_training),
    ("3", "kill -9 inside index --overwrite", Cases.killed_reindex_leaves_old_or_new),
    ("3", "second concurrent index", Cases.concurrent_index_refused),
    ("7", "identify from another directory", Cases.identify_from_another_directory),
    ("4", "planted custom_checkpoint_0.pkl + resume", Cases.planted_pickle_on_resume),
    ("5", "kill -9 during publish", Cases.killed_publish_invisible),
    ("5", "publish --output_dir that is a file", Cases.publish_into_a_file),
    ("6", "train.py --max_steps 0", Cases.max_steps_zero),
    ("6", "train.py --max_steps -3", Cases.max_steps_negative),
    ("7", "--datasets 'csv['", Cases.unclosed_spec),
    ("7", "train.py --output_dir that is a file", Cases.output_dir_is_a_file),
    ("7", "corrupted model.safetensors (index)", Cases.corrupted_weights),
    ("7", "evaluate.py --output under a file", Cases.evaluate_output_under_a_file),
    ("7", "--model /no/such/folder (evaluate.py)", Cases.missing_model_folder),
    ("7", "synthetic[images_per_identity=1000000000]", Cases.huge_synthetic_spec),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="also write the table as JSON (with the git commit the run started at)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as temporary:
        work = Path(args.keep or temporary)
        work.mkdir(parents=True, exist_ok=True)
        cases = Cases(work)
        user_files = UserFileCases(cases)
        rows = []
        for item, name, case in [*CASES, *USER_FILE_CASES]:
            start = time.monotonic()
            try:
                outcome = case(user_files if case.__qualname__.startswith("UserFileCases.") else cases)
            except Exception as error:  # a broken case is reported as unhandled, the others still run
                outcome = Outcome(False, f"case crashed: {type(error).__name__}: {error}")
            rows.append({"issue_item": item, "case": name, "handled": bool(outcome.handled), "outcome": outcome.text,
                         "seconds": round(time.monotonic() - start, 1)})
            print(f"[{item}] {name:<46} -> {'handled' if outcome.handled else 'NOT HANDLED'}: {outcome.text}", flush=True)
    handled = sum(row["handled"] for row in rows)
    print(f"{handled}/{len(rows)} handled")
    if args.output:
        Path(args.output).write_text(json.dumps({"commit": commit, "command": " ".join(sys.argv), "cases": rows},
                                                indent=1) + "\n")
    return 0 if handled == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
