# Bramble: build the SD-card image, boot it in QEMU, test, benchmark.
# `make deps` once (idempotent), then `make qemu` / `make test` / `make bench`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := image

TARGET      := aarch64-unknown-linux-musl
NODE_BINS   := bramble-init bramble-apid bramble-networkd bramble-timed bramble-runtimed bramble-etcdd
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
GIT_REV     := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# Reproducible builds: timestamps come from the last commit, not the clock.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1700000000)
export SOURCE_DATE_EPOCH
# Where a release's files are published: the Raspberry Pi Imager entry
# (dist/bramble-rpi-imager.json) points its url there.
RELEASE_BASE_URL ?= https://github.com/bramble-os/bramble/releases/download/v$(VERSION)
export BRAMBLE_GIT_REVISION := $(GIT_REV)
# Node binaries: static, with build paths remapped so they do not depend on
# where the checkout or the cargo home is.
NODE_RUSTFLAGS := -C target-feature=+crt-static --remap-path-prefix=$(CURDIR)=/bramble \
                  --remap-path-prefix=$(or $(CARGO_HOME),$(HOME)/.cargo)=/cargo
CARGO       ?= cargo

DIST        := dist
IMAGE       := $(DIST)/bramble-arm64.img
BIN_DIR     := target/$(TARGET)/release
DEPS_STAMP  := .cache/deps.stamp

.PHONY: deps build node-bins host-bins image qemu test test-host test-boot fuzz bench lint fmt clean

deps:
	bash boot/deps.sh
	@mkdir -p .cache && touch $(DEPS_STAMP)

$(DEPS_STAMP):
	$(MAKE) deps

# Static, stripped aarch64 binaries for the node.
node-bins: $(DEPS_STAMP)
	RUSTFLAGS="$(NODE_RUSTFLAGS)" $(CARGO) build --release --locked --target $(TARGET) $(addprefix -p ,$(NODE_BINS))

# Host tools: the image builder, nodectl and the QEMU harness.
host-bins: $(DEPS_STAMP)
	$(CARGO) build --locked -p bramble-image -p nodectl -p bramble-tests --bins

build: node-bins host-bins

image: build
	target/debug/bramble-image build --lock boot/packages.lock --cache .cache/debs \
	  --boot-dir boot --bin-dir $(BIN_DIR) --rootfs-overlay image/rootfs \
	  --out $(DIST) --version $(VERSION) --git-revision $(GIT_REV) \
	  --release-base-url "$(RELEASE_BASE_URL)"

# Boot one node with its serial console on this terminal (Ctrl-A X quits).
qemu: image
	target/debug/bramble-qemu --image $(IMAGE)

# Every test: host unit/integration tests, then boot tests in QEMU, then
# each fuzz target for FUZZ_TEST_SECONDS.
FUZZ_TEST_SECONDS ?= 10
test: image
	BRAMBLE_IMAGE=$(CURDIR)/$(IMAGE) BRAMBLE_BIN_DIR=$(CURDIR)/$(BIN_DIR) \
	  $(CARGO) test --locked --workspace --no-fail-fast -- --test-threads=2
	bash tests/fuzz/run.sh -t $(FUZZ_TEST_SECONDS)

# The fuzz targets (tests/fuzz/: libFuzzer on stable Rust, built into
# target/fuzz), each for FUZZ_SECONDS, or only FUZZ_TARGETS; prints the
# inputs tried and the crashes per target. A crash fails.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: $(DEPS_STAMP)
	bash tests/fuzz/run.sh -t $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# The crun comparison boots a bench image whose runtimed has `runtimed
# compare` (the `compare` feature, left out of the node's image): built into
# $(BENCH_BIN_DIR) with the other node binaries, then the image's runtimed is
# linked again.
BENCH_BIN_DIR := build/bench-bin
bench: image
	RUSTFLAGS="$(NODE_RUSTFLAGS)" $(CARGO) build --release --locked --target $(TARGET) -p bramble-runtimed --features compare
	rm -rf $(BENCH_BIN_DIR) && mkdir -p $(BENCH_BIN_DIR)
	cp $(addprefix $(BIN_DIR)/,$(NODE_BINS)) $(BENCH_BIN_DIR)/
	$(MAKE) node-bins
	target/debug/bramble-bench --image $(IMAGE) --bin-dir $(BIN_DIR) --compare-bin-dir $(BENCH_BIN_DIR) --dist $(DIST)
	BRAMBLE_IMAGE=$(CURDIR)/$(IMAGE) BRAMBLE_BIN_DIR=$(CURDIR)/$(BIN_DIR) CARGO=$(CARGO) bash tests/fault-summary.sh
	BRAMBLE_IMAGE=$(CURDIR)/$(IMAGE) BRAMBLE_BIN_DIR=$(CURDIR)/$(BIN_DIR) CARGO=$(CARGO) bash tests/etcd-figures.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path tests/fuzz/Cargo.toml -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked -p bramble-runtimed --features compare --all-targets -- -D warnings
	$(CARGO) clippy --locked --target $(TARGET) $(addprefix -p ,$(NODE_BINS)) -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf $(DIST) build
	$(CARGO) clean
