# The README's two commands are `make run` and `make test`; both create .venv/ first if needed.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) tools/blocks.py
	$(PY) tools/train.py --config configs/classify/digits_resnet18_cbam.yaml --overwrite

# pytest exits 5 when it collected no tests: that is a failure too.
test: $(STAMP)
	$(PY) -m pytest -q tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: $(STAMP)
	.venv/bin/ruff check visattn tools tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/mhsa_sdpa.py

clean:
	rm -rf .venv .pytest_cache
