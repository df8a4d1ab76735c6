# Robustness. `make test` already runs the quick versions (tests/fuzz with a few
# hundred cases, the short overload, drain and fault tests); these targets run the long ones.
#   make fuzz      hypothesis fuzzing of the servicers, >= 10,000 cases (FUZZ_EXAMPLES per test)
#   make overload  the 20 s overload acceptance run (marked slow)
#   make soak      five minutes at moderate load (marked slow; SOAK_S to change the length)

FUZZ_EXAMPLES ?= 1100
SOAK_S ?= 300

.PHONY: fuzz overload soak

fuzz: $(VENV_STAMP) ## Fuzz the servicers with >= 10,000 hypothesis cases (~1 min)
	MNIST_SERVING_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest $(PYTEST_ARGS) tests/fuzz

overload: $(VENV_STAMP) ## 20 s at many times the sustainable rate; asserts the overload criteria
	$(PY) -m pytest -s -m slow $(PYTEST_ARGS) tests/integration/robustness

soak: $(VENV_STAMP) ## Five minutes at moderate load: no errors, flat RSS and open fds (SOAK_S)
	MNIST_SERVING_SOAK_S=$(SOAK_S) $(PY) -m pytest -s -m slow $(PYTEST_ARGS) tests/soak
