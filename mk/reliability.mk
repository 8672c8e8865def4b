# Reliability checks of issue 4 (included by the top-level Makefile; `make reliability`,
# part of `make test`): long stress (release library at 2 and 16 threads, the
# check-invariants library briefly), the out-of-memory and overflow C tests (they live in
# c-tests/ and run linked and preloaded with the other C tests; run here too so that this
# target stands alone), real programs' own test suites under LD_PRELOAD, and fuzzing.
# Time on 2 cores: about 2 min stress + 1 min checked stress + 10 s C tests + ~6 min suites
# + ~1.5 min fuzz (build and 60 s run) ≈ 11 minutes.
# Knobs: STRESS_SECONDS (60), CHECKED_STRESS_SECONDS (20), FUZZ_SECONDS (60).
STRESS_SECONDS ?= 60
CHECKED_STRESS_SECONDS ?= 20
FUZZ_SECONDS ?= 60
CHECKED_LIB := target/checked/release/librsmalloc.so

.PHONY: reliability checked-lib stress-test stress-checked reliability-c-tests real-suites fuzz

checked-lib:
	$(CARGO) build --release --features check-invariants --target-dir target/checked

stress-test: lib
	$(MAKE) -C stress
	scripts/stress $(STRESS_SECONDS) 2
	scripts/stress $(STRESS_SECONDS) 16

stress-checked: checked-lib
	$(MAKE) -C stress
	RSMALLOC_LIB=$(CHECKED_LIB) scripts/stress $(CHECKED_STRESS_SECONDS) 4

reliability-c-tests: lib c-tests-build
	bash scripts/c-tests.sh oom overflow

real-suites: lib
	bash scripts/real-suites.sh

fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# Every part runs even when an earlier one fails; the target fails if any did.
reliability: lib checked-lib c-tests-build
	@fails=""; \
	$(MAKE) --no-print-directory stress-test || fails="$$fails stress"; \
	$(MAKE) --no-print-directory stress-checked || fails="$$fails stress-checked"; \
	$(MAKE) --no-print-directory reliability-c-tests || fails="$$fails c-tests(oom,overflow)"; \
	$(MAKE) --no-print-directory real-suites || fails="$$fails real-suites"; \
	$(MAKE) --no-print-directory fuzz || fails="$$fails fuzz"; \
	if [ -n "$$fails" ]; then echo "reliability: FAILED:$$fails"; exit 1; fi; \
	echo "reliability: all passed"
