"""Model card tables and model-index come from results JSON only, and regenerate idempotently."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from wildreid.cards import ModelCardError, new_model_card, render_model_card, write_model_card
from wildreid.cards.cli import main
from wildreid.cards.render import render_page

CLOSED_SET = {
    "model": "wildreid/lite0-demo",
    "protocol": "closed-set",
    "command": "python evaluate.py --model runs/demo --datasets lion:test,dog:test --protocol closed-set",
    "species": {
        "lion": {
            "top1": 0.25163, "top5": 0.5, "map": 0.123456, "n_queries": 1234, "n_identities": 94,
            "seen_in_training": True,
        },
        "dog": {
            "top1": 0.9, "top5": 0.975, "map": 0.8049, "n_queries": 40, "n_identities": 10,
            "seen_in_training": False,
        },
    },
    "mean": {"top1": 0.575815, "top5": 0.7375, "map": 0.464178, "n_queries": 1274, "n_identities": 104},
}
OPEN_SET = {
    "model": "wildreid/lite0-demo",
    "protocol": "open-set",
    "species": {
        "lion": {
            "top1": 0.2, "top5": 0.4, "map": 0.1, "n_queries": 100, "n_identities": 20, "seen_in_training": True,
            "baks": 0.31, "baus": 0.62, "baks_baus_gmean": 0.43841, "auroc_new": 0.7, "threshold": 0.55,
        }
    },
}


@pytest.fixture()
def card(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "closed.json").write_text(json.dumps(CLOSED_SET))
    (tmp_path / "results" / "open.json").write_text(json.dumps(OPEN_SET))
    text = new_model_card(
        "wildreid/lite0-demo",
        {"Closed set": "results/closed.json", "Open set": "results/open.json"},
        datasets=["wildreid/lion"],
    )
    text = text.replace("## Limitations\n", "## Limitations\n\nHand-written: night images are hard.\n")
    path = tmp_path / "model_card.md"
    path.write_text(text)
    return path


def test_tables_show_percentages_from_the_json(card):
    assert write_model_card(card) is True
    text = card.read_text()
    assert "| lion | yes | 1,234 | 94 | 25.2 | 50.0 | 12.3 |" in text
    assert "| dog | no (zero-shot) | 40 | 10 | 90.0 | 97.5 | 80.5 |" in text
    assert "| **Mean** |  | 1,274 | 104 | 57.6 | 73.8 | 46.4 |" in text
    assert "| lion | yes | 100 | 20 | 20.0 | 40.0 | 10.0 | 31.0 | 62.0 | 43.8 | 70.0 |" in text
    assert "Rendered from `results/closed.json` by `python -m wildreid.cards model_card.md`" in text
    assert CLOSED_SET["command"] in text
    assert "Hand-written: night images are hard." in text  # prose outside the markers survives


def test_model_index_metadata_is_generated(card):
    write_model_card(card)
    data = ModelCard(card.read_text()).data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-feature-extraction"
    assert data.model_name == "wildreid/lite0-demo"
    values = {(r.dataset_name, r.metric_type, r.metric_config): r.metric_value for r in data.eval_results}
    assert values[("lion", "top1_accuracy", "closed-set")] == 25.2
    assert values[("dog", "map", "closed-set")] == 80.5
    assert values[("lion", "baus", "open-set")] == 62.0
    assert len(data.eval_results) == 2 * 3 + 1 * 7
    assert "top1_accuracy" in data.metrics


def test_rendering_twice_is_idempotent(card):
    write_model_card(card)
    first = card.read_text()
    assert write_model_card(card) is False
    assert card.read_text() == first
    assert main([str(card), "--check"]) == 0


def test_a_changed_json_changes_the_table(card):
    write_model_card(card)
    changed = json.loads(json.dumps(CLOSED_SET))
    changed["species"]["lion"]["top1"] = 0.3141
    (card.parent / "results" / "closed.json").write_text(json.dumps(changed))
    assert main([str(card), "--check"]) == 1  # stale, nothing written
    assert "| lion | yes | 1,234 | 94 | 25.2 |" in card.read_text()
    assert write_model_card(card) is True
    text = card.read_text()
    assert "| lion | yes | 1,234 | 94 | 31.4 |" in text and "25.2" not in text
    assert {r.metric_value for r in ModelCard(text).data.eval_results if r.metric_type == "top1_accuracy"} >= {31.4}


def test_missing_json_fails_clearly(card, capsys):
    (card.parent / "results" / "open.json").unlink()
    with pytest.raises(ModelCardError, match=r"open\.json does not exist"):
        render_model_card(card)
    assert main([str(card)]) == 2
    assert "open.json does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("results/open.json", "../open.json"), "outside the card's folder"),
        (lambda t: t.replace("<!-- results:end -->", "", 1), "results:start inside an unclosed results block"),
        (lambda t: t.replace("<!-- results:start results/closed.json -->", "<!-- results:start -->"), "malformed"),
        (lambda t: t.split("### Closed set")[0], "no '<!-- results:start FILE -->'"),
    ],
)
def test_bad_markers_fail_clearly(card, edit, message):
    card.write_text(edit(card.read_text()))
    with pytest.raises(ModelCardError, match=message):
        render_model_card(card)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["species"]["lion"].update(top1=25.2), r"species\['lion'\]\['top1'\] must be a fraction"),
        (lambda r: r["species"]["dog"].pop("seen_in_training"), "lacks seen_in_training"),
        (lambda r: r.pop("protocol"), "needs a string 'protocol'"),
        (lambda r: r.update(model="another/model"), "different models"),
    ],
)
def test_bad_results_fail_clearly(card, edit, message):
    results = json.loads(json.dumps(CLOSED_SET))
    edit(results)
    (card.parent / "results" / "closed.json").write_text(json.dumps(results))
    with pytest.raises(ModelCardError, match=message):
        render_model_card(card)


EXPERIMENT = {
    "kind": "experiment",
    "command": "python experiments/few_shot.py --steps 60",
    "wall_time_s": 1500.0,
    "compute_time_s": 2100.0,
    "hardware_label": "Test CPU, 2 cores, 2 torch threads",
    "tables": {
        "top1": {
            "columns": ["Species", "1 img/id", "all"],
            "rows": [["lion", 25.26, None], ["pig | farm", 3, 40.04]],
            "caption": "Top-1 (%) after adaptation.",
        },
        "map": {"columns": ["Species", "mAP", "Median |margin|"], "rows": [["lion", 12.0, "0.0121"]]},
    },
}


@pytest.fixture()
def experiment_card(card):
    (card.parent / "results" / "few_shot.json").write_text(json.dumps(EXPERIMENT))
    text = card.read_text().replace(
        "## Limitations\n",
        "### Few-shot\n\n<!-- results:start results/few_shot.json#top1 -->\nstale\n<!-- results:end -->\n\n"
        "<!-- results:start results/few_shot.json#map -->\n<!-- results:end -->\n\n## Limitations\n",
    )
    card.write_text(text)
    return card


def test_experiment_tables_render_from_their_json(experiment_card):
    write_model_card(experiment_card)
    text = experiment_card.read_text()
    assert "| Species | 1 img/id | all |\n|---|---:|---:|\n| lion | 25.3 | – |\n| pig \\| farm | 3 | 40.0 |" in text
    assert "Top-1 (%) after adaptation." in text and "stale" not in text
    assert "Measured with `python experiments/few_shot.py --steps 60` in 25.0 min (35.0 min of training" in text
    assert "on Test CPU, 2 cores, 2 torch threads" in text
    assert "Rendered from `results/few_shot.json#top1`" in text and "| lion | 12.0 | 0.0121 |" in text
    assert "| Species | mAP | Median \\|margin\\| |" in text  # a pipe in a header must not add a column
    # experiment tables stay out of model-index, which keeps describing the one model's evaluate.py results
    data = ModelCard(text).data
    assert data.model_name == "wildreid/lite0-demo" and len(data.eval_results) == 2 * 3 + 1 * 7
    assert write_model_card(experiment_card) is False  # idempotent


def test_a_changed_experiment_json_changes_its_table(experiment_card):
    write_model_card(experiment_card)
    changed = json.loads(json.dumps(EXPERIMENT))
    changed["tables"]["top1"]["rows"][0][1] = 31.0
    (experiment_card.parent / "results" / "few_shot.json").write_text(json.dumps(changed))
    assert main([str(experiment_card), "--check"]) == 1
    write_model_card(experiment_card)
    assert "| lion | 31.0 | – |" in experiment_card.read_text()


def test_card_of_experiment_tables_only(tmp_path):
    (tmp_path / "few_shot.json").write_text(json.dumps(EXPERIMENT))
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: apache-2.0\n---\n# x\n<!-- results:start few_shot.json#map -->\n<!-- results:end -->\n")
    write_model_card(card)
    assert "| lion | 12.0 |" in card.read_text()


@pytest.mark.parametrize(
    ("marker", "edit", "message"),
    [
        ("few_shot.json", lambda r: None, r"has tables \['map', 'top1'\]; name one"),
        ("few_shot.json#nope", lambda r: None, r"no table 'nope'"),
        ("few_shot.json#top1", lambda r: r["tables"]["top1"]["rows"].append(["x"]), "row 2 must be a list of 3 cells"),
        ("few_shot.json#top1", lambda r: r["tables"]["top1"]["rows"].append(["x", [1], True]), "not text or numbers"),
        ("few_shot.json#top1", lambda r: r.pop("command"), "needs the string 'command'"),
        ("few_shot.json#top1", lambda r: r.update(kind="weird"), "unknown results kind 'weird'"),
        ("missing.json#top1", lambda r: None, r"missing\.json does not exist"),
    ],
)
def test_bad_experiment_results_fail_clearly(tmp_path, marker, edit, message):
    results = json.loads(json.dumps(EXPERIMENT))
    edit(results)
    (tmp_path / "few_shot.json").write_text(json.dumps(results))
    card = tmp_path / "card.md"
    card.write_text(f"# x\n<!-- results:start {marker} -->\n<!-- results:end -->\n")
    with pytest.raises(ModelCardError, match=message):
        render_model_card(card)


def test_fragment_on_evaluation_results_is_refused(card):
    card.write_text(card.read_text().replace("results/closed.json", "results/closed.json#x"))
    with pytest.raises(ModelCardError, match="fragment only applies to experiment results"):
        render_model_card(card)


def test_the_repository_card_matches_its_results_json():
    """model_card.md never drifts from experiments/results: the documented check command passes."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "wildreid.cards", "model_card.md", "--check"], cwd=repo,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model_card.md: up to date" in result.stdout


# ----------------------------------------------------------------------------- pages (README, docs/)


@pytest.fixture()
def page_tree(tmp_path):
    """A repository-like tree: results under bench/results, a page in docs/ and a README at the root."""
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "few_shot.json").write_text(json.dumps(EXPERIMENT))
    single = {"command": "python bench/one.py", "table": {"columns": ["Set", "Top-1 %"], "rows": [["lion", 50.2]]},
              "sweep_table": {"columns": ["center_box", "Top-1 %"], "rows": [[0.4, 15.5]]}}
    (tmp_path / "bench" / "results" / "one.json").write_text(json.dumps(single))
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "results.md"
    page.write_text("# Results\n\nHand-written.\n\n<!-- results:start ../bench/results/few_shot.json#top1 -->\n"
                    "stale\n<!-- results:end -->\n\n<!-- results:start ../bench/results/one.json#main -->\n"
                    "<!-- results:end -->\n<!-- results:start ../bench/results/one.json#sweep -->\n<!-- results:end -->\n")
    readme = tmp_path / "README.md"
    readme.write_text('# x\n\n<!-- results:start bench/results/few_shot.json#top1 columns="all|Species" caption="no" -->\n'
                      "<!-- results:end -->\n")
    return tmp_path


def test_a_page_renders_its_tables_without_metadata(page_tree, monkeypatch):
    monkeypatch.chdir(page_tree)
    assert main(["--root", ".", "docs/results.md", "README.md"]) == 0
    page = (page_tree / "docs" / "results.md").read_text()
    assert page.startswith("# Results\n\nHand-written.")  # no YAML metadata, no model-index
    assert "stale" not in page and "| lion | 25.3 | – |" in page and "| lion | 50.2 |" in page and "| 0.4 | 15.5 |" in page
    assert "by `python -m wildreid.cards --root . docs/results.md`; do not edit by hand" in page
    readme = (page_tree / "README.md").read_text()
    assert "| all | Species |" in readme and "| – | lion |" in readme and "| 40.0 | pig \\| farm |" in readme
    assert "Top-1 (%) after adaptation." not in readme  # caption="no"
    assert main(["--check", "--root", ".", "docs/results.md", "README.md"]) == 0


def test_a_stale_page_fails_the_check(page_tree, monkeypatch, capsys):
    monkeypatch.chdir(page_tree)
    assert main(["--root", ".", "docs/results.md", "README.md"]) == 0
    results = json.loads(json.dumps(EXPERIMENT))
    results["tables"]["top1"]["rows"][0][1] = 26.0
    (page_tree / "bench" / "results" / "few_shot.json").write_text(json.dumps(results))
    assert main(["--check", "--root", ".", "docs/results.md", "README.md"]) == 1
    assert "docs/results.md: out of date" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('columns="Species|nope"', r"no column \['nope'\]"),
        ('caption="maybe"', "options are columns"),
        ('colour="red"', "options are columns"),
    ],
)
def test_bad_page_options_fail_clearly(page_tree, options, message):
    readme = page_tree / "README.md"
    readme.write_text(f"# x\n<!-- results:start bench/results/few_shot.json#top1 {options} -->\n<!-- results:end -->\n")
    with pytest.raises(ModelCardError, match=message):
        render_page(readme, root=page_tree)


def test_a_page_reads_results_only_inside_its_root(page_tree):
    page = page_tree / "docs" / "results.md"
    with pytest.raises(ModelCardError, match="lies outside"):
        render_page(page)  # root defaults to the page's folder; ../bench is outside it
    assert "| lion | 25.3 | – |" in render_page(page, root=page_tree)


def test_the_readme_and_docs_pages_match_their_results_json():
    """README.md and the documentation pages never drift from the results JSON (`make docs` checks the same)."""
    repo = Path(__file__).resolve().parents[1]
    pages = ["README.md"] + sorted(str(p.relative_to(repo)) for p in (repo / "docs").rglob("*.md")
                                   if "<!-- results:start" in p.read_text(encoding="utf-8"))
    assert len(pages) > 1
    result = subprocess.run([sys.executable, "-m", "wildreid.cards", "--check", "--root", ".", *pages], cwd=repo,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ["contention", "onnx_speed"])
def test_a_bench_table_is_what_its_script_builds_from_the_measurements(script):
    """The tables the docs render from bench/results/{contention,onnx_speed}.json are the ones the scripts build
    from the measurements beside them (`--tables-only` rebuilds them), so no figure of them is typed."""
    import importlib.util
    import json

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{script}", repo / "bench" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(repo / "bench"))
    report = json.loads((repo / "bench" / "results" / f"{script}.json").read_text())
    assert report["table"] == module.table(report)
