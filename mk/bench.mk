# Benchmarks: `make bench` measures the ONNX Runtime and echo-server ceilings and
# the server in one run, prints one table of numbers and ratios, and rewrites
# docs/benchmarks.md. Extra options go in BENCH_ARGS, e.g.
#   make bench BENCH_ARGS='--server-args= --server-args="--workers 2"'   (compare two configs)
# (`$(PY) -m bench.run --help` lists them all.)

BENCH_ARGS ?=

.PHONY: bench bench-quick

bench: $(VENV_STAMP) model ## Benchmark the server against its ceilings (a few minutes); writes docs/benchmarks.md
	$(PY) -m bench.run --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) $(BENCH_ARGS)

bench-quick: $(VENV_STAMP) model ## A short benchmark (2 s per scenario); results in bench/results/ only
	$(PY) -m bench.run --quick --no-docs --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) $(BENCH_ARGS)
