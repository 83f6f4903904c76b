# The README's two commands are `make run` and `make test`; both create .venv/ first if needed.
# Versions: pyproject.toml declares ranges; constraints.txt holds the exact, tested set installed here.
PY := .venv/bin/python
PIP := $(PY) -m pip install --quiet -c constraints.txt
STAMP := .venv/.installed-run
DEV_STAMP := .venv/.installed

.PHONY: setup run test lint bench clean

setup: $(DEV_STAMP)

.venv/bin/python:
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip

# make run: visattn, what training needs and matplotlib (the [viz] extra: the run's results.png, confusion matrix),
# no development tools
$(STAMP): pyproject.toml constraints.txt | .venv/bin/python
	$(PIP) -e ".[viz]"
	touch $(STAMP)

# make test / lint: every extra (ONNX export, detection mAP, sweeps, figures) and pytest, ruff
$(DEV_STAMP): pyproject.toml constraints.txt | .venv/bin/python
	$(PIP) -e ".[dev]"
	touch $(STAMP) $(DEV_STAMP)

run: $(STAMP)
	$(PY) -m visattn blocks
	$(PY) -m visattn train --config digits_resnet18_cbam --overwrite

# pytest exits 5 when it collected no tests: that is a failure too.
test: $(DEV_STAMP)
	$(PY) -m pytest -q tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: $(DEV_STAMP)
	.venv/bin/ruff check visattn tools tests benchmarks

bench: $(DEV_STAMP)
	$(PY) benchmarks/mhsa_sdpa.py

clean:
	rm -rf .venv .pytest_cache
