"""What a benchmark script sets before torch or faiss load, and what its report says of the code that measured."""
from __future__ import annotations

import os

from wildreid.provenance import code_version  # importing wildreid sets only OMP_WAIT_POLICY, as limit_threads


def limit_threads() -> None:
    """One compute thread that yields its core when idle (OMP_WAIT_POLICY=PASSIVE): on a shared 2-core machine
    spinning OpenMP threads made steps 35-50x slower. Must run before torch / faiss load; env overrides win."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


RESULTS_FOLDERS = ("bench/results", "experiments/results")  # what benches write, before their report at times
CODE_AT_START = code_version()  # the code that measures: a script imports this module before it measures


def measured_by() -> dict:
    """The code a report's numbers come from: the commit checked out when the script started (a commit made while
    it ran is named apart, as `git_commit_at_end`); `git_dirty` if tracked files differed from it at the start, or
    now outside the results folders (a bench may write its own results files first), since the subprocesses some
    benches start import the code of their time."""
    end = code_version(ignore=RESULTS_FOLDERS)
    version = {**CODE_AT_START, "git_dirty": bool(CODE_AT_START["git_dirty"] or end["git_dirty"])}
    if end["git_commit"] != CODE_AT_START["git_commit"]:
        version["git_commit_at_end"] = end["git_commit"]
    return version


def write_report(output: str | os.PathLike, benchmark: str, fields: dict) -> None:
    """Write a benchmark's JSON: its name, the code that produced it (`measured_by`), `fields`, and the command
    that reruns it."""
    import json
    import sys
    from pathlib import Path

    report = {"benchmark": benchmark, **measured_by(), **fields,
              "command": f"python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])}
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def rewrite_table(output: str | os.PathLike, build) -> None:
    """Rebuild the "table" of an existing results file from its own measurements (`build(report)`), measuring
    nothing and changing no other key: for files written before the script wrote its table."""
    import json
    from pathlib import Path

    path = Path(output)
    report = json.loads(path.read_text())
    report["table"] = build(report)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"rewrote the table of {path}")


def leave_one_out_figures(model: str, spec: str, data_dir: str | None = None, num_threads: int | None = None, *,
                          across_sightings: bool = False) -> dict:
    """Leave-one-out top-1 / mAP of `model` over the species of `spec`, as evaluate.py's global protocol (a
    benchmark's "what the evaluation split says", next to what a command chose on training-side data).
    `across_sightings`: also the figures without the other photos of a query's own encounter, under
    "across_sightings", where the set records encounters (None where it does not)."""
    from pathlib import Path

    from hub_datasets.specs import load_specs
    from wildreid.embedding import embed_dataset, load_embedder
    from wildreid.evaluation.protocols import encounters_of, leave_one_out_by_species
    from wildreid.threads import configure_threads

    configure_threads(num_threads)
    embedder = load_embedder(model)
    dataset = load_specs([spec], data_dir=data_dir)
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=64, num_workers=2,
                             desc=f"evaluating {Path(model).name}")
    def figures(exclude_same_encounter: bool) -> dict:
        mean = leave_one_out_by_species(dataset, embedded, exclude_same_encounter=exclude_same_encounter)["mean"]
        return {"top1": mean["top1"], "map": mean["map"], "queries": mean["n_queries"]}

    result = {**figures(False), "model": model}
    if across_sightings:
        recorded = any(encounter is not None for encounter in encounters_of(dataset))
        result["across_sightings"] = figures(True) if recorded else None
    return result


def run_wildreid(*command: str, num_threads: int | None = None) -> float:
    """Run a `wildreid` command as a user would, from the repository root (its output shown); returns its wall
    time in seconds."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    threads = ["--num_threads", str(num_threads)] if num_threads else []
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wildreid.identification.cli", *command, *threads],
                   cwd=Path(__file__).resolve().parents[1], check=True)
    return time.perf_counter() - started
