# node-attach — see README.md. `make test` first runs `make setup`, which installs what is missing
# (as root; otherwise it names the command to run), so a fresh clone needs only `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build demo setup test lint fmt fmt-check clippy unit fuzz clean hosts

all: build

build:
	$(CARGO) build --workspace --bins

## The main job on an embedded default: a test control plane on loopback, node-attach against it.
demo: build
	./target/debug/demo

## What the tests need (apt packages, kubectl, rust components and targets): installed when
## missing, as root; otherwise the missing ones and `sudo make setup` are named. Idempotent.
setup:
	@bash tests/setup.sh

## Everything: formatting, lints, unit and integration tests, shell lint, and the end-to-end test
## (which skips, loudly, when not root). Runs `make setup` first.
test: setup
	@$(MAKE) --no-print-directory lint unit cri shellcheck e2e

lint: fmt-check clippy hosts

## No package registry or mirror host written in the tree (tests/lint/hosts.sh).
hosts:
	@bash tests/lint/hosts.sh

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

shellcheck:
	shellcheck -S style packaging/install.sh packaging/deb/build.sh packaging/userdata/*.sh
	shellcheck -S warning tests/e2e/run.sh tests/e2e/apt-mirror.sh tests/e2e/images/*.sh tests/kubernetes/*.sh tests/cri/*.sh
	shellcheck -S style tests/setup.sh tests/lint/hosts.sh tests/bench/profile.sh .ci/run

# The integration tests run the workspace binaries (node-attach, kubelet-standin): build them
# first. As root, one real Kubernetes control plane (tests/kubernetes/cluster.sh) serves the whole
# run and is stopped afterwards, however the tests end; not as root, its tests skip loudly.
REAL_CLUSTER_DIR ?= target/real-cluster
unit:
	$(CARGO) build --workspace --bins
	@if [ "$$(id -u)" = 0 ]; then \
	  bash tests/kubernetes/build.sh >/dev/null && \
	  rm -rf $(REAL_CLUSTER_DIR) && mkdir -p $(REAL_CLUSTER_DIR) && \
	  bash tests/kubernetes/cluster.sh up $(REAL_CLUSTER_DIR) --owner-pid $$$$ && \
	  { NODE_ATTACH_REAL_CLUSTER=$$(realpath $(REAL_CLUSTER_DIR)) $(CARGO) test --workspace; rc=$$?; \
	    bash tests/kubernetes/cluster.sh down $(REAL_CLUSTER_DIR); exit $$rc; }; \
	else \
	  $(CARGO) test --workspace; \
	fi

## Fuzz each untrusted parser for FUZZ_SECONDS (FUZZ_TARGETS to pick some). cargo-fuzz (cargo
## install'ed if missing) on the stable toolchain: RUSTC_BOOTSTRAP=1 lets it pass its -Z
## flags, and --sanitizer none needs no sanitizer runtime (libFuzzer's coverage and its own
## checks still run; Rust is memory-safe without ASan). New inputs go to fuzz/target/corpus/T,
## seeded from the committed fuzz/corpus/T; crashes land in fuzz/artifacts/T. Not in CI.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= cluster_info pin values strict kubeconfig ack journal issued_cert
FUZZ_FLAGS = -O --sanitizer none
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build $(FUZZ_FLAGS)
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/corpus/$$t corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $(FUZZ_FLAGS) $$t target/corpus/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 || exit 1; \
	done

clean:
	$(CARGO) clean

## A fully static x86_64 binary (musl, rustls+ring, LTO, stripped), with its size and a budget.
STATIC_TARGET ?= x86_64-unknown-linux-musl
STATIC_BIN := target/$(STATIC_TARGET)/release/node-attach
STATIC_BUDGET ?= 8388608
static:
	@rustup target list --installed | grep -qx $(STATIC_TARGET) || rustup target add $(STATIC_TARGET)
	@command -v musl-gcc >/dev/null || { echo "musl-gcc is missing: apt-get install musl-tools"; exit 1; }
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --release --locked --target $(STATIC_TARGET) -p node-attach
	@size=$$(stat -c %s $(STATIC_BIN)); \
	  echo "static binary: $(STATIC_BIN): $$size bytes ($$((size / 1024)) KiB; budget $$(($(STATIC_BUDGET) / 1048576)) MiB)"; \
	  if readelf -d $(STATIC_BIN) | grep -q NEEDED; then echo "error: $(STATIC_BIN) needs shared libraries"; exit 1; fi; \
	  if [ $$size -gt $(STATIC_BUDGET) ]; then echo "error: over the size budget"; exit 1; fi

## The files any static HTTPS server or object store can serve: attach.sh (with BASE_URL and
## the signing key's public half pinned), the binary, its digest and its Ed25519 signature.
## SIGNING_KEY (PKCS#8 PEM) is made with `node-attach artifacts keygen` when missing; keep it
## out of the served folder and safe: whoever holds it can sign binaries nodes will run.
BASE_URL ?=
SERVE_DIR ?= dist/serve
SIGNING_KEY ?= dist/signing-key.pem
serve: static
	@[ -n "$(BASE_URL)" ] || { echo "usage: make serve BASE_URL=https://host/path [SIGNING_KEY=key.pem]"; exit 1; }
	mkdir -p $(SERVE_DIR) $(dir $(SIGNING_KEY))
	@[ -f "$(SIGNING_KEY)" ] || $(STATIC_BIN) artifacts keygen --out $(SIGNING_KEY)
	key=$$($(STATIC_BIN) artifacts public-key --key $(SIGNING_KEY)) && \
	  sed -e 's#@BASE_URL@#$(BASE_URL)#g' -e "s#@PUBLIC_KEY@#$$key#g" packaging/install.sh > $(SERVE_DIR)/attach.sh
	cp $(STATIC_BIN) $(SERVE_DIR)/node-attach-linux-amd64
	cd $(SERVE_DIR) && sha256sum node-attach-linux-amd64 > node-attach-linux-amd64.sha256
	$(STATIC_BIN) artifacts sign --key $(SIGNING_KEY) $(SERVE_DIR)/node-attach-linux-amd64
	@ls -l $(SERVE_DIR)

## An artifact mirror in $(SERVE_DIR)/mirror, signed with SIGNING_KEY: the kubelet built from
## Debian's source (tests/kubernetes/build.sh, cached) and the CNI plugins of Debian's
## containernetworking-plugins (/usr/lib/cni); KUBELET, CNI_DIR and KUBERNETES_VERSION pick
## others. Serve it beside attach.sh and join with --artifacts-url BASE_URL/mirror.
KUBERNETES_VERSION ?= v1.20.2
CNI_DIR ?= /usr/lib/cni
KUBELET ?= $(shell bash tests/kubernetes/build.sh --print 2>/dev/null)/kubelet
mirror: static
	mkdir -p $(SERVE_DIR) $(dir $(SIGNING_KEY))
	@[ -f "$(SIGNING_KEY)" ] || $(STATIC_BIN) artifacts keygen --out $(SIGNING_KEY)
	@[ -x "$(KUBELET)" ] || { echo "no kubelet at $(KUBELET): run bash tests/kubernetes/build.sh, or pass KUBELET=path"; exit 1; }
	$(STATIC_BIN) artifacts publish --dir $(SERVE_DIR)/mirror --key $(SIGNING_KEY) \
	  --kubernetes-version $(KUBERNETES_VERSION) --kubelet $(KUBELET) --cni $(CNI_DIR)
	@echo "join with: --artifacts-url <BASE_URL>/mirror --artifacts-key $$($(STATIC_BIN) artifacts public-key --key $(SIGNING_KEY))"

## A .deb with the binary, the units and a default configuration file.
deb: static
	packaging/deb/build.sh $(STATIC_BIN) dist

## The end-to-end test: the real Kubernetes 1.20.2 control plane and kubelet, systemd-nspawn guests,
## cloud-init, containerd and docker (root only, skipped loudly otherwise; CI runs it). The real
## components come from tests/kubernetes/build.sh (cached; ~20 min cold).
e2e: static
	bash tests/e2e/run.sh

## node-attach join next to the real kubeadm join 1.20.2 on the same image and control plane: wall
## time to Node Ready split at the kubelet's start, each run's timeline, the join's CPU time and API
## requests (audit log), medians of PEER_RUNS runs; target/bench/peers.json and a table (root only,
## skipped loudly otherwise). PEER_BASELINE=BINARY adds that node-attach binary as a third peer in
## every run (before → after under the same load).
PEER_RUNS ?= 5
PEER_BASELINE ?=
bench-peers: static
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "######## SKIPPED: bench-peers needs root (systemd-nspawn, network namespaces) ########"; \
	else \
	  E2E_PEER_RUNS=$(PEER_RUNS) E2E_PEERS_BASELINE=$(PEER_BASELINE) E2E_PEERS_JSON=$(CURDIR)/target/bench/peers.json bash tests/e2e/run.sh --peers; \
	fi

## node-attach's CRI client against a private, real containerd (root only; skipped loudly otherwise).
cri:
	@if [ "$$(id -u)" = 0 ]; then bash tests/cri/check.sh; \
	else echo "######## SKIPPED: the CRI check needs root (a private containerd) ########"; fi

.PHONY: static serve mirror deb e2e shellcheck cri bench-peers

## What a join costs (API requests, CPU, wall; static release binary), next to bench/baseline.json;
## then installing from a signed mirror in one join, in bake mode and at the prepared root's
## boot (bench-bake, target/bench/bake.json); as root, then node-attach next to kubeadm on the
## real Kubernetes 1.20.2 (bench-peers).
bench: build static
	cp $(STATIC_BIN) target/debug/node-attach-static
	./target/debug/bench --node-attach target/debug/node-attach-static $(BENCH_ARGS)
	./target/debug/bench-bake --node-attach target/debug/node-attach-static
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory bench-peers; fi

.PHONY: bench

## Where one join's CPU goes: callgrind's instructions per phase and strace's system calls, for the
## static binary built with symbols (target/profile). Needs valgrind and strace. Not a test.
PROFILE_BIN := target/profile/$(STATIC_TARGET)/release/node-attach
bench-profile: build
	CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
	  $(CARGO) build --release --locked --target $(STATIC_TARGET) -p node-attach --target-dir target/profile
	bash tests/bench/profile.sh $(PROFILE_BIN)

.PHONY: bench-profile

## N simultaneous joins (separate roots, real HTTP and TLS) against the test control plane, direct
## and through one openapi token in serve, then with the control plane shedding load (429/503) for
## the first seconds; with BURST_REAL=DIR also against that real cluster (tests/kubernetes/cluster.sh
## up DIR). Prints joined %, p50/p99 time to joined, requests per join / the minimum. Not a test.
BURST_SIZES ?= 100,500,1000
bench-burst: build static
	cp $(STATIC_BIN) target/debug/node-attach-static
	./target/debug/burst --node-attach target/debug/node-attach-static --sizes $(BURST_SIZES) $(BURST_ARGS)
	@if [ -n "$(BURST_REAL)" ]; then ./target/debug/burst --node-attach target/debug/node-attach-static --sizes $(BURST_SIZES) --real $(BURST_REAL) $(BURST_ARGS); fi

.PHONY: bench-burst
