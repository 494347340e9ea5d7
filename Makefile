# labkit: the two commands a new user needs are `make run` and `make test` (README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
LABKIT := $(VENV)/bin/labkit
PYTEST_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

# Debian 12 packages labkit runs on (engine) and tests with.
DEB_PACKAGES := user-mode-linux slirp slirp4netns vde2 qemu-utils e2fsprogs fakeroot busybox-static dropbear-bin mmdebstrap fakechroot \
	cpio python3-venv ca-certificates
# Script checks run a lab's grader.py in a bubblewrap sandbox with Debian's /usr/bin/python3 (docs/operations.md).
DEB_PACKAGES += bubblewrap python3
# QEMU guests: the emulator and qemu-img (qcow2 overlays); the boot kernel and initrd are built from Debian's cloud kernel
# package (apt-get download, dpkg-deb) and busybox-static (docs/images.md, "QEMU boot files").
DEB_PACKAGES += qemu-system-x86
# `labkit lab up --console tmux`: one tmux window per machine's console (docs/cli.md).
DEB_PACKAGES += tmux

# Only the tests need these: the browser tests drive Debian's chromium (no browser download); the console's pixels
# (the underscore check, the screenshots in docs/) are those of DejaVu Sans Mono. tcpdump reads packet captures back.
TEST_DEB_PACKAGES := chromium fonts-dejavu-core tcpdump

.PHONY: run test lint system-deps system-packages venv vendor clean-venv

# The browser console's JavaScript comes from npm (web/package.json); nodesource's nodejs brings npm itself, so
# Debian's nodejs and npm are only asked for when there is no `npm` at all.
ifeq ($(shell command -v npm),)
DEB_PACKAGES += nodejs npm
endif
VENDOR := web/static/vendor

## Install what is missing: Debian packages through apt-get when root, else print the exact sudo line. Then open
## /dev/net/tun to every user as Debian's udev rule does (slirp4netns, the guests' way out, needs it; docs/operations.md).
system-deps: system-packages
	@if [ -c /dev/net/tun ] && [ "$$(stat -c %a /dev/net/tun)" != 666 ]; then \
	  if [ "$$(id -u)" = 0 ]; then chmod 0666 /dev/net/tun; \
	  else echo "Guests with outbound traffic need /dev/net/tun open to every user. Please run:"; \
	    echo "  sudo chmod 0666 /dev/net/tun"; exit 1; fi; \
	fi

system-packages:
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

## The web app's front-end assets (xterm.js and its fit addon, asciinema-player for replays), copied from npm packages; no CDN at run time.
$(VENDOR)/.built: web/package.json web/package-lock.json | system-deps
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	@mkdir -p $(VENDOR)
	cp web/node_modules/@xterm/xterm/lib/xterm.js web/node_modules/@xterm/xterm/css/xterm.css \
	  web/node_modules/@xterm/addon-fit/lib/addon-fit.js \
	  web/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js \
	  web/node_modules/asciinema-player/dist/bundle/asciinema-player.css $(VENDOR)/
	@touch $@

vendor: $(VENDOR)/.built

## Build the tiny image, set up the demo course, and serve the web app on 127.0.0.1 (Ctrl-C stops it).
run: system-deps venv vendor
	$(LABKIT) doctor
	$(LABKIT) image build tiny --if-missing
	$(LABKIT) demo --url http://$(HOST):$(PORT)
	@echo "Serving the web app on http://$(HOST):$(PORT)/ (Ctrl-C stops it)."
	$(LABKIT) serve --host $(HOST) --port $(PORT)

## The whole test suite: unit tests, then real UML guests (also as an unprivileged user), then the browser tests.
test: DEB_PACKAGES += $(TEST_DEB_PACKAGES)
test: system-deps venv vendor
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check labkit tests bench web

clean-venv:
	rm -rf $(VENV)
