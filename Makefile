# dtubroker: a thin layer over CMake. Build trees: build/ (RelWithDebInfo), build-asan/ (ASan+UBSan,
# Debug), build-tsan/ (ThreadSanitizer, Debug), build-fuzz/ (clang, libFuzzer). A tree is configured
# once; later runs only rebuild, so after changing a CMake option run `make clean` (or
# cmake -B <tree> -D...) yourself.
#
#   make deps         install missing Debian packages (scripts/deps.sh)
#   make build        build everything in build/
#   make test         build, fuzz smoke, then every unit and integration test (ctest prints last)
#   make test-asan    the whole ctest suite under ASan+UBSan in build-asan/
#   make test-tsan    the threaded parts (ctest label "tsan": the libusb backend's event thread and
#                     the tests that run threads of their own) under ThreadSanitizer in build-tsan/
#   make fuzz-smoke   build the fuzz targets and run each briefly (ctest label "fuzz")
#   make fuzz         run each fuzz target for FUZZ_SECONDS (default 600) s, one after the other
#   make bench        Release build in build-bench/, the etcd baseline, then every benchmark (tests/bench/), a
#                     table and build/bench/results.json; prints figures, never fails on a number
#   make demo         build, then demo/run.sh (ONCE=1 make demo: one pass, then exit)
#   make package      build, then the Debian packages dtubroker-{devmgr,agent,services} (CPack) in
#                     build/packages/ (docs/packages.md)
#   make format       clang-format the sources in place; format-check only reports
#   make clean        remove every build tree

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build
MAKEFLAGS += --no-print-directory
# Targets run one after another; parallelism is inside each step (-j$(JOBS)).
.NOTPARALLEL:

JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 600
ONCE ?=
CLANG_FORMAT ?= clang-format
FORMAT_DIRS := common devmgr dtu-agent services tests

SANITIZER_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# $(call configure,TREE,CMAKE ARGS[,ENV]): configure TREE once, when it has no CMakeCache.txt yet.
# A failed configure drops its cache, so the next run configures again.
configure = test -f $(1)/CMakeCache.txt || $(3) cmake -S . -B $(1) $(2) || { rm -f $(1)/CMakeCache.txt; exit 1; }

.PHONY: deps build test test-asan test-tsan fuzz-build fuzz-smoke fuzz bench demo package clean format format-check

deps:
	scripts/deps.sh

build: deps
	$(call configure,build,-DCMAKE_BUILD_TYPE=RelWithDebInfo -DDTU_WERROR=ON)
	cmake --build build -j$(JOBS)

test: build fuzz-smoke
	ctest --test-dir build --output-on-failure --no-tests=error -j$(JOBS)

# The fault scenarios (integration:Fault N) run here too: a sanitizer build scales their
# heartbeats, leases and deadlines by 3 (tests/integration/fault_site.hpp kSlowdown), and fault 5
# appends verify_asan_link_order=0 to ASAN_OPTIONS for its libfaketime preload.
test-asan: deps
	$(call configure,build-asan,-DCMAKE_BUILD_TYPE=Debug -DDTU_SANITIZE=ON -DDTU_WERROR=ON)
	cmake --build build-asan -j$(JOBS)
	$(SANITIZER_ENV) ctest --test-dir build-asan --output-on-failure --no-tests=error -j$(JOBS)

# ThreadSanitizer on the threaded parts only (ctest label "tsan", dtu_tsan_tests in
# tests/CMakeLists.txt): builds those tests and the programs they start (target tsan_all), not the
# whole tree. tests/tsan.supp silences races inside GLib, GIO and libudev (umockdev's testbed
# thread), which TSan cannot follow; it says why, entry by entry.
# libumockdev-preload ahead of libtsan in LD_PRELOAD is fine: TSan has no "runtime first" check
# like ASan's. What breaks is TSan's log_path=<file>: with the preload loaded the process starts
# with an empty environment (g++ 12's libtsan2, umockdev 0.17.16), so the re-exec'd test and its
# daemons lose TSAN_OPTIONS and the testbed. Reports therefore go to stderr, and as nobody reads
# the exit status of the daemons an integration test starts, their TempDirs are kept
# (DTU_KEEP_TMP) in a scratch TMPDIR and a report in any daemon's stderr (*.err) fails the run.
TSAN_ENV := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp

test-tsan: deps
	$(call configure,build-tsan,-DCMAKE_BUILD_TYPE=Debug -DDTU_TSAN=ON -DDTU_WERROR=ON)
	cmake --build build-tsan --target tsan_all -j$(JOBS)
	@tmp=$$(mktemp -d -t dtu-tsan.XXXXXX); status=0; \
	  TMPDIR=$$tmp DTU_KEEP_TMP=1 $(TSAN_ENV) \
	    ctest --test-dir build-tsan -L tsan --output-on-failure --no-tests=error -j$(JOBS) || status=$$?; \
	  for log in $$(grep -rl --include='*.err' 'WARNING: ThreadSanitizer' "$$tmp"); do \
	    echo "==== ThreadSanitizer report in $$log:"; cat "$$log"; status=1; \
	  done; \
	  rm -rf "$$tmp"; exit $$status

fuzz-build: deps
	$(call configure,build-fuzz,-DDTU_FUZZ=ON -DDTU_TESTS=OFF,CC=clang CXX=clang++)
	cmake --build build-fuzz --target fuzz_all -j$(JOBS)

fuzz-smoke: fuzz-build
	ctest --test-dir build-fuzz -L fuzz --output-on-failure --no-tests=error -j$(JOBS)

# The long run reuses the commands tests/fuzz/CMakeLists.txt registers, with -max_total_time
# (and any -runs cap) replaced so each target runs FUZZ_SECONDS. New corpus entries and crash
# files land where those commands put them.
fuzz: fuzz-build
	ctest --test-dir build-fuzz -L fuzz --show-only=json-v1 \
	  | jq -r --arg t "-max_total_time=$(FUZZ_SECONDS)" \
	      '.tests[].command | map(select(startswith("-max_total_time=") or startswith("-runs=") | not)) + [$$t] | @sh' \
	  | while read -r command; do echo "+ $$command"; eval "$$command" </dev/null; done

# Benchmarks measure and print; they never assert a figure, and ctest does not know them. Builds
# only what they need (target bench_all) in a Release tree, clears the last run's figures, runs the
# etcd baseline (tests/bench/etcd/etcd_baseline.sh: a 3-member etcd cluster on loopback, driven by
# etcd's Go client), then each *_bench under build-bench/tests/bench/ in turn (all of them even when
# one cannot run), then bench_report: the table (value, baseline, ratio, target) and
# $(BENCH_OUT_DIR)/results.json. BENCH_OUT_DIR (default build/bench/) gets every figure.
BENCH_OUT_DIR ?= $(CURDIR)/build/bench

# No -Werror here: g++ 12 at -O3 warns falsely inside std::string (-Wrestrict, -Wmaybe-uninitialized);
# `make build` compiles the benchmarks with -Werror.
bench:
	scripts/deps.sh build test bench
	$(call configure,build-bench,-DCMAKE_BUILD_TYPE=Release)
	cmake --build build-bench --target bench_all -j$(JOBS)
	@mkdir -p $(BENCH_OUT_DIR) && rm -f $(BENCH_OUT_DIR)/*.json
	@echo "bench: $$(date -u +%FT%TZ), $$(nproc) CPUs, load $$(cut -d' ' -f1-3 /proc/loadavg), $$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
	@failed=; \
	  echo "+ tests/bench/etcd/etcd_baseline.sh build-bench"; \
	  BENCH_OUT_DIR=$(BENCH_OUT_DIR) tests/bench/etcd/etcd_baseline.sh build-bench </dev/null || failed+=" etcd_baseline"; \
	  benches=$$(find build-bench/tests/bench -maxdepth 1 -type f -name '*_bench' -perm -u+x | sort); \
	  [[ -n $$benches ]] || { echo "bench: no *_bench executable under build-bench/tests/bench/" >&2; exit 1; }; \
	  for b in $$benches; do echo "+ $$b"; BENCH_OUT_DIR=$(BENCH_OUT_DIR) $$b </dev/null || failed+=" $$b"; done; \
	  echo "bench: done $$(date -u +%FT%TZ), load $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	  build-bench/tests/bench/bench_report $(BENCH_OUT_DIR); \
	  [[ -z $$failed ]] || { echo "bench: could not run:$$failed" >&2; exit 1; }

demo: build
	ONCE=$(ONCE) demo/run.sh

# cpack installs each component of build/ into build/packages/_CPack_Packages/ and packs it; it
# builds nothing itself (cmake/Packaging.cmake), hence `build` first.
package: build
	cpack --config build/CPackConfig.cmake -B build/packages
	@ls -1 build/packages/*.deb

clean:
	rm -rf build*/

# Every .hpp/.cpp of FORMAT_DIRS, NUL-separated, to xargs (-r: nothing to do when there is none).
format_sources = find $(wildcard $(FORMAT_DIRS)) -type f \( -name '*.hpp' -o -name '*.cpp' \) -print0 | xargs -0 -r

format:
	$(format_sources) $(CLANG_FORMAT) -i

format-check:
	$(format_sources) $(CLANG_FORMAT) --dry-run -Werror
