# The two commands a new user needs: `make demo` and `make test`.
# Both install what they need (a virtual environment, the Python packages,
# mosquitto from Debian's packages) on a fresh Debian machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# numba's cache notices a change of a kernel's own file, not of a helper it inlines from
# another (a run then uses the old helper): the folder is keyed by every kernel source.
KERNEL_SOURCES := $(sort $(wildcard engine/evaluation/kernels/*.py connectors/*/decode_fast.py \
                    connectors/*/batch_kernel.py))
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba/$(shell cat $(KERNEL_SOURCES) | sha1sum | cut -c1-12)

.PHONY: demo test check lint typecheck unit kernels-nojit bench install system-deps clean

demo: install system-deps
	$(BIN)/vigil demo

test: install system-deps check
	$(BIN)/python -c "from engine.evaluation.warmup import warm_kernels; warm_kernels()"
	$(BIN)/pytest
	NUMBA_DISABLE_JIT=1 $(BIN)/pytest -q tests/unit -k "kernel"

check: lint typecheck

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

bench: install system-deps
	$(BIN)/pytest bench --benchmark-only --benchmark-columns=median,ops,rounds

install: $(STAMP)

# constraints.txt pins every Python package to the versions the suite last passed with
# (the Kafka runtime relies on Faust internals); regenerate it with
# `.venv/bin/pip freeze --exclude-editable > constraints.txt` after a deliberate upgrade.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# mosquitto is a real broker from Debian's packages: the demo and the
# integration tests start their own instance on a free loopback port. Java and Maven
# run the Kafka broker that scripts/kafka fetches from Maven Central for the Kafka tests.
# Chromium (Debian's) is the browser the duty-room page's test drives through Playwright;
# WenQuanYi Zen Hei gives its screenshots Chinese glyphs.
# podman builds packaging/Containerfile and runs the image (tests/integration/test_container.py)
# with runc (crun refuses a hybrid cgroup hierarchy); debootstrap makes its Debian base
# image from Debian's mirror where Docker Hub cannot be reached.
APT_PACKAGES := mosquitto mosquitto-clients default-jre-headless maven chromium fonts-wqy-zenhei \
	podman runc debootstrap

system-deps:
	@{ command -v mosquitto || command -v /usr/sbin/mosquitto; } >/dev/null 2>&1 && \
	  command -v mosquitto_pub >/dev/null 2>&1 && \
	  command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 && \
	  command -v chromium >/dev/null 2>&1 && \
	  command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && \
	  { command -v debootstrap || command -v /usr/sbin/debootstrap; } >/dev/null 2>&1 || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES); }

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
