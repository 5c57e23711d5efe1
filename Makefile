# The two commands of the README: `make demo` and `make test`. Each builds .venv on first use.
VENV  := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml requirements/constraints.txt scripts/setup-env.sh
	bash scripts/setup-env.sh $(VENV)
	touch $@

demo: $(STAMP)
	$(VENV)/bin/slimkit demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python scripts/check_imports.py
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
