# rsmalloc: `make` builds, `make test` runs every test, `make bench` runs the comparison.
# Both test and bench do their own set-up on a fresh Debian machine (scripts/setup.sh).
CARGO ?= cargo
LIB := target/release/librsmalloc.so
PREFIX ?= /usr/local

.PHONY: all lib setup test unit-test c-tests real-programs bench bench-programs instructions clean

all: lib c-tests-build bench-programs

lib:
	$(CARGO) build --release

setup:
	bash scripts/setup.sh

c-tests-build: lib
	$(MAKE) -C c-tests

bench-programs:
	$(MAKE) -C bench-programs

unit-test:
	$(CARGO) test --release --features check-invariants

c-tests: lib c-tests-build
	bash scripts/c-tests.sh

real-programs: lib
	bash scripts/real-programs.sh

test: setup lib unit-test c-tests real-programs
	@echo "make test: all suites passed"

bench: setup lib bench-programs
	bash scripts/bench.sh

instructions: lib bench-programs
	bash scripts/instructions.sh

clean:
	$(CARGO) clean
	$(MAKE) -C c-tests clean
	$(MAKE) -C bench-programs clean
