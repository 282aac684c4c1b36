# Developer entry points. Every target is a thin wrapper around a script or a
# cargo command, so CI (.ci/run) and humans run the same thing.

.DEFAULT_GOAL := help
.PHONY: help deps demo test bench lint

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

deps: ## install missing system packages (PostgreSQL, psql/pgbench, libclang, pkg-config)
	scripts/deps.sh

demo: deps ## build and run the self-contained demo
	cargo run --release -- demo

test: ## run all tests, print "N passed, N failed"
	scripts/test.sh

bench: ## pgbench end to end: direct PostgreSQL vs through pgwarden
	benches/pgbench.sh

lint: ## rustfmt check + clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
