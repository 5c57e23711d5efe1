# The two commands of the README: `make demo` and `make test`. Each builds .venv on first use.
VENV  := .venv
STAMP := $(VENV)/.installed
# slimkit's OpenVINO operators (C++), rebuilt when their sources change
NATIVE := $(VENV)/.native

.PHONY: demo test wheel lint clean

$(STAMP): pyproject.toml setup.py requirements/constraints.txt scripts/setup-env.sh scripts/install-torch.sh
	bash scripts/setup-env.sh $(VENV)
	touch $@

$(NATIVE): $(STAMP) $(wildcard src/slimkit/runtime/engine/cpp/* src/slimkit/runtime/engine/cpp/kernels/*)
	$(VENV)/bin/python -m slimkit.runtime.engine.build
	touch $@

demo: $(NATIVE)
	$(VENV)/bin/slimkit demo --out runs/demo

test: $(NATIVE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python scripts/check_imports.py
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

# the sdist and the manylinux wheel with the operators compiled in, in dist/ (scripts/build-wheel.sh)
wheel: $(STAMP)
	bash scripts/build-wheel.sh dist $(VENV)

clean:
	rm -rf $(VENV) runs dist .pytest_cache
