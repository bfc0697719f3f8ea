# The two set-up commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench streaming clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## Run the whole pipeline on the shipped demo data with the default config.
run: $(STAMP)
	$(BIN)/hybrid-ad run --config config/config.yaml

## Simulate a streaming-service log and run the pipeline on it with behavioural features.
streaming: $(STAMP)
	$(BIN)/hybrid-ad simulate --out data/simulated/streaming.parquet --accounts 1000 --days 28 --seed 7
	$(BIN)/hybrid-ad run --config config/streaming_service.yaml

## Lint, format check and the test suite.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

## Full-data benchmark (needs ../shared/data/creditcard.csv.gz or DATA=path).
bench: $(STAMP)
	$(BIN)/python benchmarks/run_benchmark.py

clean:
	rm -rf $(VENV) artifacts benchmarks/out data/simulated
