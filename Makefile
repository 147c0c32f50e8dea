# meshgate's entry points. `make run` and `make test` work on a fresh Debian machine with a
# Rust toolchain: `make deps` installs the system packages they need.

CARGO ?= cargo
# Where cargo puts what it builds: target/ unless CARGO_TARGET_DIR says otherwise.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages. To build, test and run: cmake for Pingora's build, protobuf-compiler (protoc) for
# etcd-client's build (and clang for the
# BoringSSL backend's), wrk and h2load (nghttp2-client) for the load
# tests, redis-server for the global rate limit tests, curl, openssl, testssl.sh and NGINX for
# the TLS tests (and curl for the demo); prometheus (promtool), systemd (systemd-analyze) and
# docker-compose to check the metrics, the systemd unit and the compose stack; dnsmasq (dnsmasq-base)
# as the DNS server of the discovery tests; etcd (etcd-server, etcd-client) for the fleet tests. To benchmark, also: NGINX and HAProxy to compare
# with, procps and util-linux (taskset) for pinning, ab (apache2-utils) and valgrind for the
# instruction counts, iperf3 for the TCP throughput.
PACKAGES := cmake clang libclang-dev protobuf-compiler wrk nghttp2-client curl redis-server openssl testssl.sh nginx-light chromium \
	prometheus systemd docker-compose dnsmasq-base etcd-server etcd-client
BENCH_PACKAGES := haproxy procps util-linux apache2-utils valgrind iperf3

.PHONY: deps bench-deps build run test lint bench clean check-api fuzz

# install-missing PACKAGES...: apt-get install whichever are not installed yet.
define install-missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

# cargo-nextest (from crates.io) gives every test its own time limit (.config/nextest.toml);
# without it `make test` could only bound the whole suite.
deps:
	$(call install-missing,$(PACKAGES))
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked

# oha (from crates.io) holds a fixed request rate for the latency rows.
bench-deps:
	$(call install-missing,$(BENCH_PACKAGES))
	@command -v oha >/dev/null 2>&1 || $(CARGO) install oha --locked

build: deps
	$(CARGO) build --release --workspace

# Starts two demo echo upstreams (v1 on :9001, v2 on :9002) and the gateway on
# conf/meshgate.toml; Ctrl-C stops all three.
run: build
	@set -e; \
	$(TARGET_DIR)/release/meshgate-echo -l 127.0.0.1:9001 -n v1 & v1=$$!; \
	$(TARGET_DIR)/release/meshgate-echo -l 127.0.0.1:9002 -n v2 & v2=$$!; \
	trap 'kill $$v1 $$v2 2>/dev/null' EXIT INT TERM; \
	$(TARGET_DIR)/release/meshgate run -c conf/meshgate.toml

# The whole suite on the default (rustls) build, then the TLS end-to-end tests again on the
# BoringSSL build. Under nextest each test is bounded by .config/nextest.toml; plain cargo test
# is bounded as a whole by timeout(1).
BORINGSSL := --no-default-features --features boringssl,jemalloc
test: deps
	$(CARGO) build --workspace --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast && \
		$(CARGO) nextest run -p meshgate $(BORINGSSL) --test tls --no-fail-fast; \
	else \
		timeout --kill-after=10 1500 $(CARGO) test --workspace --no-fail-fast && \
		timeout --kill-after=10 600 $(CARGO) test -p meshgate $(BORINGSSL) --test tls --no-fail-fast; \
	fi

# clippy's incompatible_msrv lint refuses any standard library item newer than the declared
# `rust-version`, so the declared version stays true.
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p meshgate $(BORINGSSL) --all-targets -- -D warnings

bench: build bench-deps
	$(CARGO) build --release --example bare_pingora
	@mkdir -p loadtest/results
	bash -o pipefail -c '{ loadtest/bench.sh && echo && loadtest/http2.sh && echo && \
	  loadtest/latency.sh && echo && loadtest/scaling.sh && echo && loadtest/callgrind.sh && \
	  echo && loadtest/idle-memory.sh && echo && loadtest/tcp.sh; } 2>&1 | tee loadtest/results/bench-full.md'

# schemathesis (from PyPI, into a venv under target/) with all of its checks against a running
# gateway's admin API and admin-api/openapi.yaml.
# --all-targets, as `make test` builds: the same features, so after it nothing is built again.
check-api: deps
	$(CARGO) build --workspace --all-targets
	admin-api/check-api.sh $(TARGET_DIR)/debug/meshgate

# cargo-fuzz targets (fuzz/): the policy loader, the /explain query parser and header rules,
# FUZZ_SECONDS each (default 60). cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the
# stable toolchain take them. The loader's corpus starts from the bundled policies.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := policy_load explain_query header_rules
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	mkdir -p fuzz/corpus/policy_load && cp conf/*.toml conf/examples/*.toml fuzz/corpus/policy_load/
	for target in $(FUZZ_TARGETS); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none $$target -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
			|| exit 1; \
	done

clean:
	$(CARGO) clean
