# tapwire: the two commands a user needs are `make demo` and `make test`.
# Both install missing system packages first (scripts/ensure-deps.sh).

CARGO ?= cargo

.PHONY: demo test lint bench deps

## demo: the whole pipeline on loopback with built-in servers (needs root for capture).
demo: deps
	$(CARGO) build --release --bins
	target/release/tapwire-demo

## test: unit tests and end-to-end tests with live capture on loopback (needs root).
test: deps
	$(CARGO) build --bins
	$(CARGO) test --workspace

## lint: formatting and clippy, as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: fixed-rate pipeline benchmark, the listener-replayer link benchmark, files, what
## comparing responses costs, then the listener's memory under packet floods (see
## bench/pipeline.sh, bench/link.sh, bench/files.sh, bench/compare-targets.sh and bench/flood.sh
## for options).
bench:
	bench/pipeline.sh
	bench/link.sh
	bench/files.sh
	bench/compare-targets.sh
	bench/flood.sh

deps:
	@scripts/ensure-deps.sh

.PHONY: chart-check

## chart-check: render the Helm chart (defaults and examples) with Helm's engine, lint it, validate
## the manifests against the Kubernetes API schemas, run checkov and the chart tests; no cluster
## needed (deploy/helm/check.sh).
chart-check:
	deploy/helm/check.sh

.PHONY: lab

## lab: two production hosts, two replayers and two staging hosts in network namespaces; one
## replayer's link is cut and the other killed under traffic, then the accounting per host is
## printed (needs root; see deploy/lab/README.md).
lab: deps
	$(CARGO) build --release --bins
	deploy/lab/lab.py --bin-dir target/release

.PHONY: package package-check docker-check

## package: Debian packages of both binaries in target/debian/ (cargo-deb; see deploy/packages.md).
package: deps
	@scripts/package.sh

## package-check: as CI runs it, as root: build, lintian, install, run, purge the packages
## (scripts/check-packages.sh), then lint the Dockerfiles (docker-check).
package-check: deps
	@scripts/check-packages.sh
	@scripts/check-dockerfiles.sh

## docker-check: lint deploy/docker/*.Dockerfile with hadolint (failing on warnings).
docker-check:
	@scripts/check-dockerfiles.sh
