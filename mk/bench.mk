# Benchmarks: `make bench` measures the ONNX Runtime ceiling, the echo floors (grpc.aio,
# pygrpc-native, ASGI) and the server in one run, prints one table of numbers and ratios,
# and rewrites docs/benchmarks.md. Extra options go in BENCH_ARGS, e.g.
#   make bench BENCH_ARGS='--server-args="--workers 1" --server-args="--workers 2"'   (compare two configs)
# (`$(PY) -m bench.run --help` lists them all.)
#
# The single-image unary rows are driven by h2load, a C load generator from Debian's
# nghttp2-client: `bench-deps` installs it when missing (the system-deps recipe, for this
# package only), and `make test` installs it with the other Debian packages (the bench's
# end-to-end test runs it).

# By default four configurations side by side, so that each comparison is one run's ratio:
# the server's defaults (--workers auto, the native gRPC front), the grpc.aio front, one
# process, and every call traced (exported to the bench's own OTLP sink, bench/otlp_sink.py);
# model monitoring off (--drift-window 0: its CPU per request against the defaults'), and a
# shadow version of equal cost (bench/shadow_repository.py: the primary's p99 against the
# defaults').
BENCH_SHADOW_REPOSITORY := bench/results/shadow-repository
BENCH_ARGS ?= --server-args= --server-args="--grpc-front grpcio" --server-args="--workers 1" --server-args="--tracing on" --server-args="--drift-window 0" --server-args="--model-repository $(BENCH_SHADOW_REPOSITORY)"
BENCH_DEBIAN_PACKAGES := $(call debian-packages,bench)
DEBIAN_PACKAGES += $(BENCH_DEBIAN_PACKAGES)

.PHONY: bench bench-quick bench-deps bench-shadow-repository

bench-deps: ## Install h2load (Debian's nghttp2-client) for the benchmarks when missing
	@$(MAKE) --no-print-directory system-deps DEBIAN_PACKAGES="$(BENCH_DEBIAN_PACKAGES)"

bench-shadow-repository: $(VENV_STAMP) model
	$(PY) -m bench.shadow_repository --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) --output $(BENCH_SHADOW_REPOSITORY)

bench: $(VENV_STAMP) model bench-deps bench-shadow-repository ## Benchmark the server against its ceilings (a few minutes); writes docs/benchmarks.md
	$(PY) -m bench.run --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) $(BENCH_ARGS)

bench-quick: $(VENV_STAMP) model bench-deps bench-shadow-repository ## A short benchmark (2 s per scenario); results in bench/results/ only
	$(PY) -m bench.run --quick --no-docs --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) $(BENCH_ARGS)
