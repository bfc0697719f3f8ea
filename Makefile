# The two set-up commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench streaming transactions stream-demo clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,stream,service,spark]'
	touch $(STAMP)

## Run the whole pipeline on the shipped demo data with the default config.
run: $(STAMP)
	$(BIN)/hybrid-ad run --config config/config.yaml

## Simulate a streaming-service log and run the pipeline on it with behavioural features.
streaming: $(STAMP)
	$(BIN)/hybrid-ad simulate --out data/simulated/streaming.parquet --accounts 1000 --days 28 --seed 7
	$(BIN)/hybrid-ad run --config config/streaming_service.yaml

## Simulate card transactions and run the pipeline with the standard fraud feature set.
transactions: $(STAMP)
	$(BIN)/hybrid-ad simulate --kind transactions --out data/simulated/transactions.parquet --customers 2000 --terminals 4000 --days 90 --seed 7
	$(BIN)/hybrid-ad run --config config/transactions.yaml

## Real time: a private redis-server, publish the demo file, score it with `make run`'s model via `hybrid-ad stream`.
stream-demo: $(STAMP)
	test -f artifacts/model/manifest.json || $(MAKE) run
	$(BIN)/python -m hybrid_ad.stream.demo --out artifacts/stream-demo --model artifacts/model --events data/demo/creditcard_50k.csv.gz

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
