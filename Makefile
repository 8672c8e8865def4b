# rsmalloc: `make` builds, `make test` runs every test, `make bench` runs the comparison.
# Both test and bench do their own set-up on a fresh Debian machine (scripts/setup.sh).
CARGO ?= cargo
LIB := target/release/librsmalloc.so
PREFIX ?= /usr/local

.PHONY: all lib setup test unit-test c-tests real-programs rust-example options-test cxx-test bench bench-programs instructions install clean

all: lib c-tests-build bench-programs

# The shared library is built as a cdylib alone: compiled together with the rlib, internal
# symbols stay preemptible and every table and call on the fast path goes through the GOT.
# `--cfg rsmalloc_so` makes it no_std (see src/lib.rs): no Rust runtime, no libgcc_s.
lib:
	$(CARGO) rustc --release --lib --crate-type cdylib -- --cfg rsmalloc_so

setup:
	bash scripts/setup.sh

c-tests-build: lib
	$(MAKE) -C c-tests

bench-programs:
	$(MAKE) -C bench-programs

unit-test:
	$(CARGO) test --release --features check-invariants --target-dir target/checked

c-tests: lib c-tests-build
	bash scripts/c-tests.sh

real-programs: lib
	bash scripts/real-programs.sh

rust-example:
	$(CARGO) run --release --example global_alloc --target-dir target/rust

options-test: lib
	bash scripts/options-test.sh

cxx-test: lib
	bash scripts/cxx-test.sh

test: setup lib unit-test c-tests real-programs rust-example options-test cxx-test reliability
	@echo "make test: all suites passed"

bench: setup lib bench-programs
	bash scripts/bench.sh

instructions: lib bench-programs
	bash scripts/instructions.sh

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

install: lib
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(LIB) $(DESTDIR)$(PREFIX)/lib/librsmalloc.so
	install -m 644 include/rsmalloc.h $(DESTDIR)$(PREFIX)/include/rsmalloc.h
	install -m 755 scripts/rsmalloc-run $(DESTDIR)$(PREFIX)/bin/rsmalloc-run
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' scripts/rsmalloc.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/rsmalloc.pc

clean:
	$(CARGO) clean
	$(MAKE) -C c-tests clean
	$(MAKE) -C bench-programs clean
include mk/reliability.mk
