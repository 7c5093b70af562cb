"""Issue 34's cases for `bench/bad_inputs.py`: nothing a user owns is deleted or overwritten, one bad photo
never sinks a batch, names never act as formulas, killed commands leave no workers or temporary files.

Each case runs the real command line in a subprocess on generated data and checks the outcome it should
have (see `bad_input_tools.refused`); run them through `python bench/bad_inputs.py`.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
from PIL import Image

from bad_input_tools import KILL_AT, REPO, TINY_TRAINING, Outcome, cli, refused, run, write_images

FOREIGN = {"metadata.survey2023.parquet": b"not ours", "embeddings.megadescriptor.safetensors": b"theirs",
           "local_features.v1.npz": b"keep me", "README.md": b"# my notes", "config.json": b"{}",
           "model.safetensors": b"someone's model"}
HOSTILE_NAMES = ['=HYPERLINK("http://example.invalid/?x","id")', "@SUM(A1)", "+lion", "=2+5"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def foreign_folder(folder: Path, with_checkpoint: bool = False) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in FOREIGN.items():
        (folder / name).write_bytes(content)
    if with_checkpoint:
        (folder / "checkpoints" / "checkpoint-7").mkdir(parents=True, exist_ok=True)
        (folder / "checkpoints" / "checkpoint-7" / "weights.bin").write_bytes(b"another tool's checkpoint")
    return snapshot(folder)


class UserFileCases:
    def __init__(self, base):
        self.work = base.work / "user_files"
        self.work.mkdir(parents=True, exist_ok=True)
        self.model, self.images, self.base_other_model = base.model, base.images, base.other_model
        self.gallery = self.work / "gallery"
        done = run(cli("index", "--model", str(self.model), "--datasets", f"folder:{self.images}", "--output",
                       str(self.gallery), "--local-features", "--num_workers", "0"))
        assert done.returncode == 0, done.stderr[-2000:]
        self.good = self.images / "ind0" / "0.png"

    def identify(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return run(cli("identify", "--gallery", str(self.gallery), *args), timeout=timeout)

    # 1. output folders that are not ours
    def index_into_a_foreign_folder(self) -> Outcome:
        target = self.work / "survey"
        before = foreign_folder(target)
        outcome = refused(run(cli("index", "--model", str(self.model), "--datasets", f"folder:{self.images}",
                                  "--output", str(target), "--num_workers", "0")), str(target), "--overwrite")
        unchanged = snapshot(target) == before
        return Outcome(outcome.handled and unchanged, f"{outcome.text}; folder byte-identical: {unchanged}")

    def index_overwrite_keeps_other_files(self) -> Outcome:
        target = self.work / "survey_overwrite"
        before = foreign_folder(target)
        codes = [run(cli("index", "--model", str(self.model), "--datasets", f"folder:{self.images}", "--output",
                         str(target), "--num_workers", "0", "--overwrite")).returncode for _ in range(2)]
        after = snapshot(target)
        kept = {name: after.get(name) for name in before} == before
        return Outcome(codes == [0, 0] and kept, f"two --overwrite saves: exit {codes}; the {len(before)} other "
                                                 f"files byte-identical: {kept}")

    def train_into_a_foreign_folder(self) -> Outcome:
        target = self.work / "not_a_run"
        before = foreign_folder(target, with_checkpoint=True)
        outcome = refused(run(["train.py", "--datasets", f"folder:{self.images}", "--min_images_per_identity", "2",
                               "--max_steps", "1", "--output_dir", str(target), *TINY_TRAINING]),
                          str(target), "--overwrite_output_dir")
        unchanged = snapshot(target) == before
        return Outcome(outcome.handled and unchanged, f"{outcome.text}; folder byte-identical: {unchanged}")

    def training_prunes_only_its_own_checkpoints(self) -> Outcome:
        target = self.work / "shared_run"
        common = ["train.py", "--datasets", f"folder:{self.images}", "--min_images_per_identity", "2",
                  "--output_dir", str(target), "--save_steps", "1", "--save_total_limit", "1", *TINY_TRAINING]
        first = run([*common, "--max_steps", "3"])
        foreign_folder(target, with_checkpoint=True)
        again = refused(run([*common, "--max_steps", "2"]), "earlier training run", "--resume_from_checkpoint")
        second = run([*common, "--max_steps", "2", "--overwrite_output_dir"])
        names = sorted(p.name for p in (target / "checkpoints").iterdir())
        foreign_kept = (target / "checkpoints" / "checkpoint-7" / "weights.bin").read_bytes() == \
            b"another tool's checkpoint"
        ok = first.returncode == 0 and again.handled and second.returncode == 0 and foreign_kept \
            and names == ["checkpoint-2", "checkpoint-3", "checkpoint-7"]
        return Outcome(ok, f"rerun without a flag: {again.text}; with --overwrite_output_dir: checkpoints {names} "
                           "(its own 2, the earlier run's 3, another tool's 7 kept)")

    # 2. one bad photo never sinks a batch
    def extreme_aspect_ratio_queries(self) -> Outcome:
        texts, ok = [], True
        for size in ((40000, 20), (20, 40000)):
            strip = self.work / f"strip_{size[0]}x{size[1]}.png"
            Image.new("RGB", size, (120, 80, 40)).save(strip)
            output = self.work / "aspect.json"
            done = self.identify("--images", str(strip), str(self.good), "--method", "local", "--output", str(output))
            written = json.loads(output.read_text()) if done.returncode == 0 else {}
            answered = [r["query"] for r in written.get("results", [])] == [str(self.good)]
            reason = next((f["reason"] for f in written.get("failures", []) if f["file"] == str(strip)), "")
            ok &= answered and "aspect ratio" in reason
            texts.append(f"{size[0]}x{size[1]}: exit {done.returncode}, skipped ({reason[-60:]})")
        return Outcome(ok, "; ".join(texts) + "; the good photo answered")

    def extreme_aspect_ratio_in_an_indexed_folder(self) -> Outcome:
        folder = write_images(self.work / "with_strip")
        Image.new("RGB", (40000, 20), (120, 80, 40)).save(folder / "ind1" / "strip.png")
        done = run(cli("index", "--model", str(self.model), "--datasets", f"folder:{folder}", "--output",
                       str(self.work / "g_strip"), "--local-features", "--num_workers", "0"))
        ok = done.returncode == 0 and "strip.png" in done.stdout and "aspect ratio" in done.stdout
        return Outcome(ok, (done.stdout.strip() or done.stderr.strip())[-160:])

    def fifo_query(self) -> Outcome:
        fifo = self.work / "photo.jpg"
        if not fifo.exists():
            os.mkfifo(fifo)
        start = time.monotonic()
        try:
            done = self.identify("--images", str(fifo), str(self.good), timeout=120)
        except subprocess.TimeoutExpired:
            return Outcome(False, "identify blocked on the FIFO for 120 s")
        ok = done.returncode == 0 and f"skipped {fifo}" in done.stderr and "not a regular file" in done.stderr
        return Outcome(ok, f"exit {done.returncode} in {time.monotonic() - start:.1f} s; "
                           + next((line for line in done.stderr.splitlines() if "skipped" in line), done.stderr[-150:]))

    def missing_query_rows(self) -> Outcome:
        rows = [["image", "identity"], ["ind0/0.png", "ind0"]] + [[f"ind0/gone{i}.png", "ind0"] for i in range(3)]
        queries = self.images / "queries.csv"
        with open(queries, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        output = self.work / "missing.json"
        done = self.identify("--datasets", f"csv:{queries}", "--output", str(output))
        written = json.loads(output.read_text()) if done.returncode == 0 else {}
        ok = len(written.get("results", [])) == 1 and len(written.get("failures", [])) == 3
        return Outcome(ok, f"exit {done.returncode}: {len(written.get('results', []))} answered, "
                           f"{len(written.get('failures', []))} missing rows listed")

    def many_missing_rows_named_together(self) -> Outcome:
        rows = [["image", "identity"]] + [[f"ind0/gone{i}.png", "ind0"] for i in range(20000)]
        listing = self.images / "many_missing.csv"
        with open(listing, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        return refused(run(cli("index", "--model", str(self.model), "--datasets", f"csv:{listing}", "--output",
                               str(self.work / "g_missing"), "--num_workers", "0")),
                       "20000 row(s)", "line 2", "and 19990 more")

    def threshold_nan(self) -> Outcome:
        return refused(self.identify("--images", str(self.good), "--threshold", "nan"), "--threshold", "finite number")

    # 3. names that would act
    def formula_names_in_matches_csv(self) -> Outcome:
        listing = self.images / "hostile.csv"
        with open(listing, "w", newline="") as handle:
            csv.writer(handle).writerows([["image", "identity", "species", "image_id"]]
                                         + [[f"ind{i % 3}/{i // 3}.png", name, "=1+1", name]
                                            for i, name in enumerate(HOSTILE_NAMES)])
        gallery = self.work / "g_hostile"
        built = run(cli("index", "--model", str(self.model), "--datasets", f"csv:{listing}", "--output", str(gallery),
                        "--num_workers", "0"))
        output = self.work / "matches.csv"
        done = run(cli("identify", "--gallery", str(gallery), "--images", str(self.good), "--output", str(output)))
        if built.returncode or done.returncode:
            return Outcome(False, (built.stderr + done.stderr)[-200:])
        with open(output, newline="") as handle:
            cells = [row[column] for row in csv.DictReader(handle) for column in ("identity", "species", "image_id")]
        neutral = all(not cell.startswith(("=", "+", "-", "@")) for cell in cells) and len(cells) == 3 * 4
        return Outcome(neutral, f"{len(cells)} identity/species/image_id cells, e.g. {cells[0]!r}: none starts a "
                                "formula")

    # 4. killed commands leave nothing running or half-written
    def keypoint_workers_die_with_the_command(self) -> Outcome:
        folder = write_images(self.work / "many", identities=12, per_identity=12, size=512)  # > 128: a pool
        command = [sys.executable, "-m", "wildreid.identification.cli", "index", "--model", str(self.model),
                   "--datasets", f"folder:{folder}", "--output", str(self.work / "g_workers"), "--local-features",
                   "--num_workers", "0"]
        parent = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process, workers = psutil.Process(parent.pid), []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and parent.poll() is None and len(workers) < 2:
            time.sleep(0.2)  # the keypoint pool: grandchildren under the forkserver
            workers = [child for child in process.children(recursive=True) if child.ppid() != parent.pid]
        if len(workers) < 2:
            parent.kill()
            return Outcome(False, "no keypoint worker pool seen")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        time.sleep(10)
        alive = [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        return Outcome(not alive, f"{len(workers)} workers; alive 10 s after kill -9 of the command: {alive}")

    def killed_calibrate_leaves_no_temporary_file(self) -> Outcome:
        gallery = self.work / "g_calibrate"
        built = run(cli("index", "--model", str(self.model), "--datasets", f"folder:{self.images}", "--output",
                        str(gallery), "--num_workers", "0"))
        before = set(os.listdir(gallery))
        killed = run(["-c", KILL_AT, "pandas:DataFrame.to_parquet", "0", "wildreid.identification.cli",
                      "calibrate", "--gallery", str(gallery), "--datasets", f"folder:{self.images}", "--num_workers",
                      "0"])
        leftovers = sorted(name for name in os.listdir(gallery) if name.startswith(".tmp"))
        again = run(cli("calibrate", "--gallery", str(gallery), "--datasets", f"folder:{self.images}",
                        "--num_workers", "0"))
        after = set(os.listdir(gallery))
        ok = built.returncode == 0 and killed.returncode == -9 and not leftovers and again.returncode == 0 \
            and len(after) == len(before)
        return Outcome(ok, f"kill -9 after the embeddings, before the metadata: exit {killed.returncode}; temporary files {leftovers}; "
                           f"the next calibrate cleans the partial revision ({len(after)} files, as before)")

    def disk_full_during_index(self) -> Outcome:
        gallery = self.work / "g_full"
        assert run(cli("index", "--model", str(self.model), "--datasets", f"folder:{self.images}", "--output",
                       str(gallery), "--num_workers", "0")).returncode == 0
        before = snapshot(gallery)
        limited = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); "
                   "sys.argv = ['wildreid', *sys.argv[1:]]; "
                   "runpy.run_module('wildreid.identification.cli', run_name='__main__', alter_sys=True)")
        outcome = refused(run(["-c", limited, "index", "--model", str(self.model), "--datasets",
                               f"folder:{self.images}", "--output", str(gallery), "--num_workers", "0",
                               "--overwrite"]), "could not write", str(gallery), "left as it was")
        unchanged = snapshot(gallery) == before
        return Outcome(outcome.handled and unchanged, f"{outcome.text}; gallery byte-identical: {unchanged}")

    def manifest_pointing_outside(self) -> Outcome:
        gallery = self.work / "g_outside"
        assert run(cli("index", "--model", str(self.model), "--datasets", f"folder:{self.images}", "--output",
                       str(gallery), "--num_workers", "0")).returncode == 0
        manifest = json.loads((gallery / "gallery.json").read_text())
        name = manifest["files"]["metadata"]["name"]
        outside = self.work / "outside.parquet"
        (gallery / name).rename(outside)
        (gallery / name).symlink_to(outside)
        linked = refused(run(cli("identify", "--gallery", str(gallery), "--images", str(self.good))), "symlink",
                         "outside the gallery folder")
        manifest["files"]["metadata"]["name"] = str(outside)
        (gallery / "gallery.json").write_text(json.dumps(manifest))
        absolute = refused(run(cli("identify", "--gallery", str(gallery), "--images", str(self.good))),
                           "not a plain name inside the gallery folder")
        return Outcome(linked.handled and absolute.handled, f"symlink: {linked.text}; absolute: {absolute.text}")


    # 5. ONNX folders checked at load
    def onnx_exports(self) -> tuple[Path, Path, Path]:
        if not hasattr(self, "_exports"):
            other = self.work / "model_32"
            run(["-c", "import sys, torch; from modeling_wildreid import WildReIDConfig, WildReIDModel; "
                 "torch.manual_seed(3); WildReIDModel(WildReIDConfig(backbone='tf_efficientnet_lite0', "
                 "image_size=32)).save_pretrained(sys.argv[1])", str(other)])
            exports = []
            for model, name in ((self.model, "onnx_a"), (self.base_other_model, "onnx_b"), (other, "onnx_32")):
                done = run(cli("export", "--format", "onnx", "--model", str(model), "--output", str(self.work / name)))
                assert done.returncode == 0, done.stderr[-2000:]
                exports.append(self.work / name)
            self._exports = tuple(exports)
        return self._exports

    def index_onnx(self, folder: Path) -> subprocess.CompletedProcess:
        return run(cli("index", "--runtime", "onnx", "--model", str(folder), "--datasets", f"folder:{self.images}",
                       "--output", str(self.work / "g_onnx"), "--num_workers", "0", "--overwrite"))

    def swapped_onnx_graph(self) -> Outcome:
        first, second, _ = self.onnx_exports()
        swapped = self.work / "onnx_swapped"
        subprocess.run(["cp", "-r", str(first), str(swapped)], check=True)
        (swapped / "model.onnx").write_bytes((second / "model.onnx").read_bytes())
        return refused(self.index_onnx(swapped), str(swapped / "model.onnx"), "has SHA-256", "recorded",
                       "re-export")

    def empty_and_truncated_onnx_graph(self) -> Outcome:
        first, _, _ = self.onnx_exports()
        outcomes = []
        for name, cut in (("empty", 0), ("truncated", 4096)):
            damaged = self.work / f"onnx_{name}"
            subprocess.run(["cp", "-r", str(first), str(damaged)], check=True)
            (damaged / "model.onnx").write_bytes((first / "model.onnx").read_bytes()[:cut])
            outcomes.append(refused(self.index_onnx(damaged), str(damaged / "model.onnx"), "re-export"))
        return Outcome(all(o.handled for o in outcomes), " | ".join(o.text for o in outcomes))

    def onnx_graph_of_another_input_size(self) -> Outcome:
        first, _, small = self.onnx_exports()
        mixed = self.work / "onnx_mixed"
        subprocess.run(["cp", "-r", str(first), str(mixed)], check=True)
        (mixed / "model.onnx").write_bytes((small / "model.onnx").read_bytes())
        record = json.loads((mixed / "onnx_export.json").read_text())
        record.pop("graph_sha256", None)  # as an export made before graph hashes were recorded
        (mixed / "onnx_export.json").write_text(json.dumps(record))
        return refused(self.index_onnx(mixed), "takes pixel_values of shape", "image_size 64", "re-export")

    # 6. the review app
    def app_on_all_interfaces(self) -> Outcome:
        temp = self.work / "gradio_tmp"
        temp.mkdir(exist_ok=True)
        app = subprocess.Popen([sys.executable, "-m", "wildreid.identification.cli", "app", "--gallery",
                                str(self.gallery), "--host", "0.0.0.0", "--port", "7871"], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO), "GRADIO_TEMP_DIR": str(temp)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        warned = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and app.poll() is None and not warned:
            line = app.stderr.readline()
            warned = "WARNING" in line and "0.0.0.0" in line
        app.send_signal(signal.SIGTERM)
        try:
            code = app.wait(timeout=60)
        except subprocess.TimeoutExpired:
            app.kill()
            code = "killed"
        left = sorted(p.name for p in temp.glob("wildreid-app-*"))
        return Outcome(warned and code == 0 and not left, f"warning printed: {warned}; SIGTERM -> exit {code}; "
                                                          f"upload folders left: {left}")

    def app_malformed_login(self) -> Outcome:
        flag = refused(run(cli("app", "--gallery", str(self.gallery), "--auth", "nocolon")), "--auth", "no ':'")
        env = refused(run(cli("app", "--gallery", str(self.gallery)), env={"WILDREID_APP_AUTH": ""}),
                      "WILDREID_APP_AUTH")
        return Outcome(flag.handled and env.handled, f"--auth nocolon: {flag.text} | empty $WILDREID_APP_AUTH: {env.text}")

    def app_html_identity(self) -> Outcome:
        script = """
import html, numpy as np
from wildreid.identification.review.scoring import RankedIndividual, Ranking
from wildreid.identification.review.session import Candidate, Proposal
from wildreid.identification.review.ui import describe_candidate, describe_suggestion
name = "lion/<img src=x onerror=alert(1)>"
picture = np.zeros((4, 8, 3), dtype=np.uint8)
candidate = Candidate(identity=name, probability=0.9, score=0.8, method="global", image_id=name + ".jpg", photo=0,
                      global_score=0.8, verified_matches=0, pair=picture, explanation=picture)
ranking = Ranking("global", [RankedIndividual(name, 0.8, 0.9, 0, 0, 0.8)], False, 0.5, 0.8, None)
proposal = Proposal("p1", [], None, np.zeros((1, 4), np.float32), [], ranking, [candidate])
texts = [describe_candidate(1, candidate), describe_suggestion(proposal)]
print(all("<img" not in text and name in html.unescape(text) for text in texts))
"""
        done = run(["-c", script])
        ok = done.returncode == 0 and done.stdout.strip() == "True"
        return Outcome(ok, "candidate and suggestion text hold the name escaped, no <img> element" if ok
                       else done.stderr[-200:] or done.stdout)


USER_FILE_CASES: list[tuple[str, str, Callable[[UserFileCases], Outcome]]] = [
    ("34.1", "index into a non-empty folder that is no gallery", UserFileCases.index_into_a_foreign_folder),
    ("34.1", "index --overwrite there keeps the other files", UserFileCases.index_overwrite_keeps_other_files),
    ("34.2", "train.py into a non-empty folder, no run", UserFileCases.train_into_a_foreign_folder),
    ("34.2", "second run into a run's folder: prunes its own", UserFileCases.training_prunes_only_its_own_checkpoints),
    ("34.4", "40000x20 and 20x40000 query photos (local)", UserFileCases.extreme_aspect_ratio_queries),
    ("34.4", "40000x20 photo in an indexed folder", UserFileCases.extreme_aspect_ratio_in_an_indexed_folder),
    ("34.5", "FIFO as a query photo", UserFileCases.fifo_query),
    ("34.6", "formula identities -> identify --output .csv", UserFileCases.formula_names_in_matches_csv),
    ("34.w", "SIFT workers after kill -9 of index", UserFileCases.keypoint_workers_die_with_the_command),
    ("34.w", "kill -9 during calibrate: temporary files", UserFileCases.killed_calibrate_leaves_no_temporary_file),
    ("34.w", "3 missing query rows (identify --datasets)", UserFileCases.missing_query_rows),
    ("34.w", "20,000 missing rows (index)", UserFileCases.many_missing_rows_named_together),
    ("34.w", "identify --threshold nan", UserFileCases.threshold_nan),
    ("34.w", "file size limit hit during index --overwrite", UserFileCases.disk_full_during_index),
    ("34.w", "gallery.json naming a file outside the folder", UserFileCases.manifest_pointing_outside),
    ("34.3", "model.onnx swapped for another export's", UserFileCases.swapped_onnx_graph),
    ("34.w", "empty and truncated model.onnx", UserFileCases.empty_and_truncated_onnx_graph),
    ("34.w", "model.onnx of another input size (old export)", UserFileCases.onnx_graph_of_another_input_size),
    ("34.w", "app --host 0.0.0.0, then SIGTERM", UserFileCases.app_on_all_interfaces),
    ("34.w", "app --auth malformed / empty env", UserFileCases.app_malformed_login),
    ("34.w", "app: <img> identity in candidate text", UserFileCases.app_html_identity),
]
