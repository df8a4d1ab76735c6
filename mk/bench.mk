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
# process, and every call traced (exported to the bench's own OTLP sink, bench/otlp_sink.py).
BENCH_ARGS ?= --server-args= --server-args="--grpc-front grpcio" --server-args="--workers 1" --server-args="--tracing on"
BENCH_DEBIAN_PACKAGES := $(call debian-packages,bench)
DEBIAN_PACKAGES += $(BENCH_DEBIAN_PACKAGES)

.PHONY: bench bench-quick bench-deps

bench-deps: ## Install h2load (Debian's nghttp2-client) for the benchmarks when missing
	@$(MAKE) --no-print-directory system-deps DEBIAN_PACKAGES="$(BENCH_DEBIAN_PACKAGES)"

bench: $(VENV_STAMP) model bench-deps ## Benchmark the server against its ceilings (a few minutes); writes docs/benchmarks.md
	$(PY) -m bench.run --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) $(BENCH_ARGS)

bench-quick: $(VENV_STAMP) model bench-deps ## A short benchmark (2 s per scenario); results in bench/results/ only
	$(PY) -m bench.run --quick --no-docs --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME) $(BENCH_ARGS)
