# The two commands of the README. Each builds the virtualenv first (once) with the README's install step.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# accelerate launch sets OMP_NUM_THREADS=1 unless told: on 2 cores that made the demo's steps 1.6x slower.
CPU_THREADS ?= $(shell nproc)
DEMO_DATA := synthetic[n_identities=16,images_per_identity=6,image_size=160,seed=0]

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	$(MAKE) --no-print-directory install-browser
	touch $@

.PHONY: install install-browser test demo docs shipped-run ship-model
install: $(VENV)/.installed

# Headless Chromium for the review app's browser tests (Debian packages; needs root and apt-get).
# Elsewhere it only says how: those two tests then skip with that reason.
install-browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "note: install chromium and chromium-driver (as root: apt-get install chromium chromium-driver) to run the browser tests"; \
	fi

# On every core (pytest-xdist); a test file stays on one worker, so its module fixtures are built once.
test: $(VENV)/.installed
	$(PYTHON) -m pytest -q -n auto --dist loadfile

# The documentation site (mkdocs.yml, docs/) into site/: fails when a results table of the README or a page is
# stale (re-render: python -m wildreid.cards --root . FILE...), or on a broken link, a missing page or a
# docstring mkdocstrings cannot read (--strict). CI runs it after the tests.
DOC_PAGES = README.md $(shell grep -rl --include='*.md' 'results:start' docs)
docs: $(VENV)/.installed
	$(PYTHON) -m wildreid.cards --check --root . $(DOC_PAGES) \
		|| { echo "re-render them: $(PYTHON) -m wildreid.cards --root . $(DOC_PAGES)" >&2; exit 1; }
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Main job: train the multi-species demo model (CPU, offline, a few minutes), then evaluate it per species.
demo: $(VENV)/.installed
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(CPU_THREADS) \
		train.py --config configs/demo.yaml --output_dir outputs/demo --overwrite_output_dir
	$(PYTHON) evaluate.py --model outputs/demo --datasets "$(DEMO_DATA):test" --output outputs/demo/eval/results.json --plots

# README "Identify your animals": a 60-step model on generated stripes, a gallery, its threshold, queries.
IDENTIFY_DATA := synthetic[n_species=1,n_identities=12,images_per_identity=6,image_size=128,seed=0]
IDENTIFY_DIR := outputs/identify_demo
identify-demo: $(VENV)/.installed
	$(PYTHON) train.py --datasets "$(IDENTIFY_DATA):train" --val_datasets --image_size 96 --max_steps 60 --warmup_steps 10 \
		--identities_per_batch 4 --images_per_identity 4 --num_workers 0 --output_dir $(IDENTIFY_DIR)/model --overwrite_output_dir
	$(VENV)/bin/wildreid index --model $(IDENTIFY_DIR)/model --datasets "$(IDENTIFY_DATA):train" --output $(IDENTIFY_DIR)/gallery --local-features --overwrite
	$(VENV)/bin/wildreid calibrate --gallery $(IDENTIFY_DIR)/gallery --datasets "$(IDENTIFY_DATA):train"
	$(VENV)/bin/wildreid identify --gallery $(IDENTIFY_DIR)/gallery --datasets "$(IDENTIFY_DATA):test" --top_k 3

# The model wildreid ships (wildreid/default_model/, float16, <= 10 MB; its card is model_card.md), only when the
# recipe changes. Its weights are the point that transferred best to species never trained on: a checkpoint step of
# the flagship recipe over a 600-step schedule (the leave-one-species-out models' budget) and the share of that
# step's fine-tuning kept, chosen by `python experiments/transfer_mix.py --checkpoints` on the held-out species'
# training splits. `make shipped-run` trains that schedule on the four species, keeping its checkpoints, and writes
# the chosen point to SHIP_FROM (the leave-one-species-out models are trained first if missing); `make ship-model`
# then stores it in the package.
SHIPPED_RUN ?= outputs/cpu_real_s600
SHIP_FROM ?= outputs/cpu_real_transfer
SHIP_SHARES ?= 0 0.25 0.5 0.75 1
shipped-run: $(VENV)/.installed
	$(PYTHON) train.py --config configs/cpu_real.yaml --max_steps 600 --eval_steps 200 --save_steps 150 \
		--save_total_limit 4 --output_dir $(SHIPPED_RUN)
	$(PYTHON) experiments/transfer_mix.py --checkpoints --shares $(SHIP_SHARES) --apply $(SHIPPED_RUN) --apply-output $(SHIP_FROM)
ship-model: $(VENV)/.installed
	$(PYTHON) -m wildreid.embedding.shipped_model $(SHIP_FROM) --card model_card.md
