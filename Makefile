# labkit: the two commands a new user needs are `make run` and `make test` (README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
LABKIT := $(VENV)/bin/labkit
PYTEST_ARGS ?=

# Debian 12 packages labkit runs on (engine) and tests with.
DEB_PACKAGES := user-mode-linux slirp vde2 qemu-utils e2fsprogs fakeroot busybox-static dropbear-bin mmdebstrap fakechroot \
	cpio python3-venv ca-certificates

.PHONY: run test lint system-deps venv clean-venv

## Install what is missing: Debian packages through apt-get when root, else print the exact sudo line.
system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "labkit needs these Debian packages. Please run:"; \
	  echo "  sudo apt-get install -y --no-install-recommends$$missing"; \
	  exit 1; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

## Build the tiny image, boot a demo machine, and print how to reach it.
run: system-deps venv
	$(LABKIT) doctor
	$(LABKIT) image build tiny --if-missing
	@$(LABKIT) vm status demo >/dev/null 2>&1 || $(LABKIT) vm create demo --image tiny --forward 0:22
	@$(LABKIT) vm status demo --json | grep -q '"state": "running"' || $(LABKIT) vm start demo
	$(LABKIT) vm status demo
	@echo
	@echo "The demo machine is running. Reach it with:"
	@echo "  $(LABKIT) vm console demo         (Ctrl-] detaches)"
	@echo "  $(LABKIT) vm exec demo -- uname -a"
	@echo "  $(LABKIT) vm ssh demo             (prints the ssh command line)"
	@echo "Stop it with: $(LABKIT) vm stop demo"

## The whole test suite: unit tests, then real UML guests (also as an unprivileged user).
test: system-deps venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check labkit tests bench web

clean-venv:
	rm -rf $(VENV)
