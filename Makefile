# node-attach — see README.md. Every target works on a fresh machine once .ci/run's setup ran.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build demo test lint fmt fmt-check clippy unit fuzz clean

all: build

build:
	$(CARGO) build --workspace --bins

## The main job on an embedded default: a test control plane on loopback, node-attach against it.
demo: build
	./target/debug/demo

## Everything: formatting, lints, unit and integration tests.
test: lint unit

lint: fmt-check clippy

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The integration tests run the workspace binaries (node-attach, kubelet-standin): build them first.
unit:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## Fuzz each parser for FUZZ_SECONDS (needs nightly; installs cargo-fuzz if missing). Not in CI.
FUZZ_SECONDS ?= 30
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in cluster_info pin values; do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
