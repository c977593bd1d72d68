# ContextKit — build, test and run everything from here.
#
#   make            libcontextcore.a, libcontextcore.so and contextcore.pc in build/
#   make deps       install what is missing (Debian: libck-dev, libcmocka-dev, valgrind)
#   make test       deps, build, run the C tests and `swift test`
#   make test       also: a ContextKit-only consumer resolves nothing else and
#                   names libck-dev when it is missing (consumer-test); every
#                   README/DocC snippet compiles (snippet-test)
#   make ci         make test, then the C tests under ASan+UBSan, TSan and
#                   valgrind, `swift test` under TSan and ASan, and the
#                   two-process tracing check (integration-test)
#   make docs       DocC archives for ContextKit and the integration products
#   make demo       build and run the examples (Swift and C)
#   make bench      build and run the benchmarks; prints one table
#                   (SAVE=1: also writes docs/benchmarks.md, docs/scaling.svg)
#   make bench-server  a Hummingbird server, ContextKit vs @TaskLocal per
#                   request, under wrk on 127.0.0.1 (~80 s plus the build)
#   make install    install header, libraries and contextcore.pc under PREFIX
#   make clean      remove build output
#
# Overridable: SWIFT, CC, PREFIX, BUILD, CCTX_TEST_SCALE (percent of the
# iteration counts the C stress tests use; sanitizer and valgrind runs lower it).

SWIFT ?= swift
CC ?= cc
PREFIX ?= /usr/local
BUILD ?= build
VERSION := 0.1.0

SUDO := $(shell [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && echo sudo)

CORE_DIR := Sources/CContextCore
CORE_SRC := $(sort $(wildcard $(CORE_DIR)/*.c))
CORE_HDR := $(wildcard $(CORE_DIR)/*.h) $(wildcard $(CORE_DIR)/include/*.h)
C_TESTS := $(sort $(basename $(notdir $(wildcard Tests/C/test_*.c))))
C_TEST_COMMON := $(wildcard Tests/C/support/*.c)

# Recursive (=) on purpose: pkg-config runs when a recipe needs it, after
# `deps` has installed the packages.
CK_CFLAGS = $(shell pkg-config --cflags ck)
CK_LIBS = $(shell pkg-config --libs ck)
CMOCKA_LIBS = $(shell pkg-config --libs cmocka)

WARN := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wstrict-prototypes
CORE_CFLAGS = -std=gnu11 -D_GNU_SOURCE -fPIC -fvisibility=hidden $(WARN) \
	-I$(CORE_DIR)/include -I$(CORE_DIR) $(CK_CFLAGS)
OPT ?= -O2 -g
# CCTX_SO_PATH: the shared library test_teardown dlopens (and dlcloses
# under a running thread); every C test binary is built after it.
TEST_SO = $(abspath $(BUILD))/libcontextcore.so
TEST_CFLAGS = -std=gnu11 -D_GNU_SOURCE $(WARN) -I$(CORE_DIR)/include -I$(CORE_DIR) \
	-ITests/C/support $(CK_CFLAGS) -DCCTX_SO_PATH='"$(TEST_SO)"'
TEST_LIBS = $(CMOCKA_LIBS) $(CK_LIBS) -lpthread -lm -ldl

.PHONY: all lib deps test ci c-test swift-test c-asan c-tsan c-valgrind \
	swift-tsan swift-asan demo bench install install-test downstream-test consumer-test snippet-test integration-test uninstall clean docs

all: lib

lib: deps $(BUILD)/libcontextcore.a $(BUILD)/libcontextcore.so $(BUILD)/contextcore.pc

# ---------------------------------------------------------------- deps
deps:
	@missing=""; \
	pkg-config --exists ck 2>/dev/null || missing="$$missing libck-dev"; \
	pkg-config --exists cmocka 2>/dev/null || missing="$$missing libcmocka-dev"; \
	command -v valgrind >/dev/null 2>&1 || missing="$$missing valgrind"; \
	command -v pkg-config >/dev/null 2>&1 || missing="$$missing pkg-config"; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# ---------------------------------------------------------------- library
$(BUILD)/obj/%.o: $(CORE_DIR)/%.c $(CORE_HDR) | $(BUILD)/obj
	$(CC) $(CORE_CFLAGS) $(OPT) -c -o $@ $<

$(BUILD)/obj $(BUILD)/tests $(BUILD)/asan $(BUILD)/tsan $(BUILD)/test-obj:
	@mkdir -p $@

CORE_OBJ = $(patsubst $(CORE_DIR)/%.c,$(BUILD)/obj/%.o,$(CORE_SRC))

# The library the C tests, the soak and the fuzzer link: the same sources
# with allocation accounting (cctx__live_allocations) compiled in. The
# production build leaves it out: a process-wide counter on every
# allocation is a cache line all threads would fight over.
# The same builds also turn the executable invariants on (CCTX_ASSERT, the
# node check after each HAMT builder: internal.h).
ACCOUNTING := -DCCTX_ALLOC_ACCOUNTING -DCCTX_INTERNAL_CHECKS
TEST_CORE_OBJ = $(patsubst $(CORE_DIR)/%.c,$(BUILD)/test-obj/%.o,$(CORE_SRC))
TEST_LIB = $(BUILD)/test-obj/libcontextcore-test.a

$(BUILD)/test-obj/%.o: $(CORE_DIR)/%.c $(CORE_HDR) | $(BUILD)/test-obj
	$(CC) $(CORE_CFLAGS) $(ACCOUNTING) $(OPT) -c -o $@ $<

$(TEST_LIB): $(TEST_CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libcontextcore.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

# -z nodelete: dlclose never unmaps the library. Every thread that used it
# holds per-thread state whose pthread_key destructor is code in this
# library; unmapping it while such a thread still runs would make that
# thread crash at exit. (Deleting the key at unload instead would leak
# every live thread's state.)
SO_LDFLAGS := -Wl,-z,nodelete
$(BUILD)/libcontextcore.so: $(CORE_OBJ)
	$(CC) -shared -Wl,-soname,libcontextcore.so.0 $(SO_LDFLAGS) -o $@ $^ $(CK_LIBS) -lpthread

$(BUILD)/contextcore.pc: contextcore.pc.in Makefile | $(BUILD)/obj
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

# ---------------------------------------------------------------- C tests
$(BUILD)/tests/%: Tests/C/%.c $(C_TEST_COMMON) $(wildcard Tests/C/support/*.h) $(TEST_LIB) \
		$(BUILD)/libcontextcore.so | $(BUILD)/tests
	$(CC) $(TEST_CFLAGS) -O1 -g -o $@ $< $(C_TEST_COMMON) $(TEST_LIB) $(TEST_LIBS)

c-test: lib $(addprefix $(BUILD)/tests/,$(C_TESTS))
	@set -e; for t in $(C_TESTS); do echo "== $$t"; $(BUILD)/tests/$$t; done
	@if [ -x "$(SIGNAL_CC)" ]; then $(MAKE) --no-print-directory $(BUILD)/tests-clang/test_signal && \
		echo "== test_signal (built by $(SIGNAL_CC))" && \
		CCTX_TEST_SCALE=$${CCTX_TEST_SCALE:-50} $(BUILD)/tests-clang/test_signal; \
		else echo "c-test: no $(SIGNAL_CC): test_signal not run under clang"; fi

# test_signal once more, built by the toolchain's clang, which compiles the
# library in every Swift build: get's signal safety rests on what the
# compiler may move across a signal fence, and clang moved accesses that
# gcc kept in place.
SIGNAL_CC ?= /opt/swift/usr/bin/clang
$(BUILD)/tests-clang/test_signal: Tests/C/test_signal.c $(CORE_SRC) $(CORE_HDR) $(C_TEST_COMMON) \
		$(wildcard Tests/C/support/*.h)
	@mkdir -p $(BUILD)/tests-clang
	$(SIGNAL_CC) $(TEST_CFLAGS) $(ACCOUNTING) -O2 -g -fno-omit-frame-pointer -o $@ $< \
		$(C_TEST_COMMON) $(CORE_SRC) $(TEST_LIBS)

# Sanitizer builds compile the library sources straight into each test.
SAN_SRC = $(CORE_SRC) $(C_TEST_COMMON)

$(BUILD)/asan/%: Tests/C/%.c $(CORE_SRC) $(CORE_HDR) $(C_TEST_COMMON) $(BUILD)/libcontextcore.so | $(BUILD)/asan
	gcc $(TEST_CFLAGS) $(ACCOUNTING) -I$(CORE_DIR) -O1 -g -fno-omit-frame-pointer \
		-fsanitize=address,undefined -fno-sanitize-recover=all \
		-o $@ $< $(SAN_SRC) $(TEST_LIBS)

$(BUILD)/tsan/%: Tests/C/%.c $(CORE_SRC) $(CORE_HDR) $(C_TEST_COMMON) $(BUILD)/libcontextcore.so | $(BUILD)/tsan
	gcc $(TEST_CFLAGS) $(ACCOUNTING) -I$(CORE_DIR) -O1 -g -fsanitize=thread \
		-o $@ $< $(SAN_SRC) $(TEST_LIBS)

c-asan: deps $(addprefix $(BUILD)/asan/,$(C_TESTS))
	@set -e; for t in $(C_TESTS); do echo "== asan+ubsan $$t"; \
		CCTX_TEST_SCALE=$${CCTX_TEST_SCALE:-50} ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/asan/$$t; done

c-tsan: deps $(addprefix $(BUILD)/tsan/,$(C_TESTS))
	@set -e; for t in $(C_TESTS); do echo "== tsan $$t"; \
		CCTX_TEST_SCALE=$${CCTX_TEST_SCALE:-20} TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
		$(BUILD)/tsan/$$t; done

c-valgrind: c-test
	@set -e; for t in $(C_TESTS); do echo "== valgrind $$t"; \
		CCTX_TEST_SCALE=$${CCTX_TEST_SCALE:-5} valgrind -q --fair-sched=yes --leak-check=full \
		--errors-for-leak-kinds=definite,indirect,possible --show-leak-kinds=definite,indirect,possible \
		--error-exitcode=99 $(BUILD)/tests/$$t; done

# ---------------------------------------------------------------- Swift
# Every trait on: the opt-in integration products (ContextKitLogging,
# ContextKitServiceContext) and their tests build only with their traits.
TRAITS ?= --enable-all-traits

swift-test: deps
	$(SWIFT) build --build-tests $(TRAITS)
	$(SWIFT) test $(TRAITS)

# A separate package that depends on ContextKit by path, as users do.
downstream-test: deps
	@mkdir -p $(BUILD); scripts/fresh-scratch.sh Tests/Downstream/.build
	@echo "building Tests/Downstream (ContextKit as a path dependency) ..."
	@$(SWIFT) build --package-path Tests/Downstream > $(BUILD)/downstream-build.log 2>&1 || \
		{ cat $(BUILD)/downstream-build.log; exit 1; }
	$(SWIFT) run --skip-build --package-path Tests/Downstream DownstreamCheck

# A ContextKit-only consumer (Tests/Downstream/MinimalConsumer) resolves no
# other package, and without libck-dev SwiftPM's error names it.
consumer-test: deps
	SWIFT=$(SWIFT) scripts/check-consumer.sh $(BUILD)

# Every Swift and C block of README.md and the DocC articles compiles (and
# those that state their output print it). See scripts/check-snippets.py.
snippet-test: deps lib
	@scripts/fresh-scratch.sh $(BUILD)/snippets
	SWIFT=$(SWIFT) SNIPPET_CC=$(CC) $(PYTHON) scripts/check-snippets.py $(BUILD)

# Tests/Integration: an AsyncHTTPClient client and a Hummingbird server in
# two processes on 127.0.0.1 propagate W3C traceparent/baggage from and into
# ContextKit variables. Minutes to build (Hummingbird, AsyncHTTPClient), so
# `make ci` runs it, not `make test`.
integration-test: deps
	@mkdir -p $(BUILD); scripts/fresh-scratch.sh Tests/Integration/.build
	@echo "building Tests/Integration (Hummingbird, AsyncHTTPClient) ..."
	@$(SWIFT) build --package-path Tests/Integration > $(BUILD)/integration-build.log 2>&1 || \
		{ cat $(BUILD)/integration-build.log; exit 1; }
	timeout 600 $(SWIFT) run --skip-build --package-path Tests/Integration TraceE2E

swift-tsan: deps
	$(SWIFT) test $(TRAITS) --sanitize=thread --scratch-path .build-tsan

swift-asan: deps
	LSAN_OPTIONS=suppressions=$(abspath Tests/Sanitizers/lsan-swift.supp) \
		$(SWIFT) test $(TRAITS) --sanitize=address --scratch-path .build-asan

# ---------------------------------------------------------------- reliability
# Fuzzing (libFuzzer, toolchain clang), soak. See docs/reliability.md.
#   make fuzz FUZZ_SECONDS=N   fuzz the C API for N s (default 60) on a fresh
#                              copy of Tests/Fuzz/corpus in $(BUILD)/fuzz/
#                              (FUZZ_KEEP=1 keeps the grown corpus between runs)
#   make soak SOAK_SECONDS=N   8 threads + thread churn for N s (default 300)
#   make fuzz-ci / soak-ci     the 60-second versions that `make ci` runs
.PHONY: fuzz fuzz-ci soak soak-ci

FUZZ_CC ?= /opt/swift/usr/bin/clang
FUZZ_SECONDS ?= 60
FUZZ_ARGS ?=
FUZZ_DIR = $(BUILD)/fuzz
SOAK_SECONDS ?= 300

$(FUZZ_DIR)/fuzz_api: Tests/Fuzz/fuzz_api.c $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) -std=gnu11 -D_GNU_SOURCE $(ACCOUNTING) $(WARN) -g -O1 -fno-omit-frame-pointer \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fuse-ld=lld \
		-I$(CORE_DIR)/include -I$(CORE_DIR) $(CK_CFLAGS) \
		-o $@ Tests/Fuzz/fuzz_api.c $(CORE_SRC) $(CK_LIBS) -lpthread

fuzz: deps $(FUZZ_DIR)/fuzz_api
	@mkdir -p $(FUZZ_DIR)/artifacts
	@if [ "$(FUZZ_KEEP)" != 1 ]; then rm -rf $(FUZZ_DIR)/corpus; fi
	@mkdir -p $(FUZZ_DIR)/corpus && cp Tests/Fuzz/corpus/* $(FUZZ_DIR)/corpus/
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(FUZZ_DIR)/fuzz_api -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=20 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/artifacts/ \
		$(FUZZ_ARGS) $(FUZZ_DIR)/corpus

fuzz-ci:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=60 FUZZ_KEEP=0

$(BUILD)/soak/soak: Tests/Soak/soak.c $(TEST_LIB)
	@mkdir -p $(BUILD)/soak
	$(CC) $(TEST_CFLAGS) -O2 -g -o $@ $< $(TEST_LIB) $(CK_LIBS) -lpthread

soak: lib $(BUILD)/soak/soak
	$(BUILD)/soak/soak $(SOAK_SECONDS)

soak-ci:
	@$(MAKE) --no-print-directory soak SOAK_SECONDS=60

# ---------------------------------------------------------------- top level
test: deps lib c-test install-test swift-test downstream-test consumer-test snippet-test

ci: test c-asan c-tsan c-valgrind swift-tsan swift-asan integration-test fuzz-ci soak-ci docs
	@echo "make ci: all stages passed"

EXAMPLES_C := $(sort $(basename $(notdir $(wildcard Examples/c/*.c))))

$(BUILD)/examples/%: Examples/c/%.c $(BUILD)/libcontextcore.a $(CORE_DIR)/include/contextcore.h
	@mkdir -p $(BUILD)/examples
	$(CC) -std=c11 -Wall -Wextra -O2 -I$(CORE_DIR)/include -o $@ $< $(BUILD)/libcontextcore.a $(CK_LIBS) -lpthread

demo: deps lib $(addprefix $(BUILD)/examples/,$(EXAMPLES_C))
	@scripts/fresh-scratch.sh Examples/swift/.build
	@echo "building the Swift examples (Examples/swift) ..."
	@$(SWIFT) build --package-path Examples/swift > $(BUILD)/examples/swift-build.log 2>&1 || \
		{ cat $(BUILD)/examples/swift-build.log; exit 1; }
	@echo; echo "================ C (Examples/c) ================"
	@for e in $(EXAMPLES_C); do $(BUILD)/examples/$$e; echo; done
	@echo "================ Swift (Examples/swift) ================"
	@$(SWIFT) run --skip-build --package-path Examples/swift ContextKitDemo

# Installs into a scratch prefix and builds the C examples with nothing but
# pkg-config, as a user of the installed library would.
install-test: lib
	@rm -rf $(BUILD)/prefix
	@$(MAKE) --no-print-directory install PREFIX=$(abspath $(BUILD))/prefix > /dev/null
	@set -e; export PKG_CONFIG_PATH=$(abspath $(BUILD))/prefix/lib/pkgconfig; n=0; \
	for e in $(EXAMPLES_C); do \
		$(CC) -o $(BUILD)/prefix/$$e Examples/c/$$e.c $$(pkg-config --cflags --libs contextcore); \
		LD_LIBRARY_PATH=$(abspath $(BUILD))/prefix/lib $(BUILD)/prefix/$$e > /dev/null; \
		n=$$((n + 1)); \
	done; \
	e=$(firstword $(EXAMPLES_C)); \
	$(CC) -o $(BUILD)/prefix/$$e-norpath Examples/c/$$e.c $$(pkg-config --cflags --libs contextcore); \
	if ! ldconfig -p 2>/dev/null | grep -q libcontextcore && \
		env -u LD_LIBRARY_PATH $(BUILD)/prefix/$$e-norpath > /dev/null 2>&1; then \
		echo "install-test: expected a program linked without rpath to fail to start (README says so)"; exit 1; fi; \
	n=$$((n + 1)); \
	$(CC) -o $(BUILD)/prefix/$$e-rpath Examples/c/$$e.c $$(pkg-config --cflags --libs contextcore) \
		-Wl,-rpath,$(abspath $(BUILD))/prefix/lib; \
	env -u LD_LIBRARY_PATH $(BUILD)/prefix/$$e-rpath > /dev/null; n=$$((n + 1)); \
	echo "install-test (examples built with only pkg-config against the installed copy, then run;"; \
	echo "  without -Wl,-rpath the program cannot start, with it it runs):"; \
	echo "$$n passed, 0 failed"

# ---------------------------------------------------------------- benchmarks
# `make bench` builds (release) and runs three programs in turn, then merges
# their rows into one table (scripts/bench/table.py):
#   $(BUILD)/bench/bench_core     ContextKit's C API            (Benchmarks/c)
#   $(BUILD)/bench/bench_cpython  CPython's C API, embedded     (Benchmarks/c)
#   ContextKitBench               Swift: ContextKit and its Swift peers
#                                 (Benchmarks/Package.swift, its own package:
#                                 the root `swift build`/`swift test` never see it)
# `make bench SAVE=1` also writes docs/benchmarks.md and docs/scaling.svg.
# BENCH_PIP=0 stops bench-deps from pip-installing `immutables` (the
# CPython HAMT peer; its rows are skipped when it is not importable).
# Not part of `ci`.
BENCH_DIR = $(BUILD)/bench
PYTHON ?= python3
PYTHON_CONFIG ?= python3-config
BENCH_PIP ?= 1
BENCH_CFLAGS = -std=gnu11 -D_GNU_SOURCE -O2 $(WARN) -I$(CORE_DIR)/include
BENCH_SWIFT_SCRATCH = $(BENCH_DIR)/swift

.PHONY: bench-deps bench-build bench-c bench-cpython bench-swift bench-swift-build bench-table

bench-deps:
	@if [ "$(BENCH_PIP)" = 1 ] && command -v $(PYTHON) >/dev/null 2>&1 && \
		! $(PYTHON) -c 'import immutables' >/dev/null 2>&1; then \
		echo "make bench: installing the CPython HAMT peer (pip install immutables)"; \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check immutables \
			|| echo "make bench: immutables not installed; its rows will be skipped"; \
	fi

$(BENCH_DIR):
	@mkdir -p $@

$(BENCH_DIR)/bench_core: Benchmarks/c/bench_core.c Benchmarks/c/bench_common.h \
		$(BUILD)/libcontextcore.a | $(BENCH_DIR)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BUILD)/libcontextcore.a $(CK_LIBS) -lpthread

# Embeds CPython when python3-config and Python.h are there; otherwise the
# program only prints "skipped: no python3-dev" rows.
$(BENCH_DIR)/bench_cpython: Benchmarks/c/bench_cpython.c Benchmarks/c/bench_common.h | $(BENCH_DIR)
	@pycflags="$$($(PYTHON_CONFIG) --cflags --embed 2>/dev/null)"; \
	pyldflags="$$($(PYTHON_CONFIG) --ldflags --embed 2>/dev/null)"; \
	if [ -n "$$pycflags" ] && printf '#include <Python.h>\nint main(void){return 0;}\n' | \
		$(CC) $$pycflags -x c -fsyntax-only - >/dev/null 2>&1; then \
		echo "$(CC) [python3-config --cflags --embed] -O2 -o $@ $<"; \
		$(CC) $$pycflags -std=gnu11 -O2 -Wno-unused-parameter -o $@ $< $$pyldflags; \
	else \
		echo "make bench: no python3-dev (python3-config / Python.h): CPython rows skipped"; \
		$(CC) $(BENCH_CFLAGS) -DBENCH_NO_PYTHON -o $@ $<; \
	fi

bench-swift-build:
	@scripts/fresh-scratch.sh $(BENCH_SWIFT_SCRATCH)
	$(SWIFT) build -c release --package-path Benchmarks --scratch-path $(BENCH_SWIFT_SCRATCH) \
		--product ContextKitBench

bench-build: lib $(BENCH_DIR)/bench_core $(BENCH_DIR)/bench_cpython bench-swift-build

# One program each (build, run, rows into $(BENCH_DIR)/*.tsv); then
# `make bench-table` prints the table from whatever rows are there.
BENCH_RUN_C = $(BENCH_DIR)/bench_core > $(BENCH_DIR)/core.tsv
BENCH_RUN_CPYTHON = $(BENCH_DIR)/bench_cpython > $(BENCH_DIR)/cpython.tsv
BENCH_RUN_SWIFT = $(BENCH_SWIFT_SCRATCH)/release/ContextKitBench > $(BENCH_DIR)/swift.tsv

bench-c: lib $(BENCH_DIR)/bench_core
	$(BENCH_RUN_C)

bench-cpython: bench-deps $(BENCH_DIR)/bench_cpython
	$(BENCH_RUN_CPYTHON)

bench-swift: bench-swift-build
	$(BENCH_RUN_SWIFT)

# Re-prints the table from the last run's rows (SAVE=1 writes docs/ too).
bench-table:
	@$(PYTHON) scripts/bench/table.py $(if $(SAVE),--save docs) \
		--start-load "$$(cat $(BENCH_DIR)/loadavg 2>/dev/null)" \
		--wall "$$(cat $(BENCH_DIR)/wall 2>/dev/null)" \
		$(BENCH_DIR)/core.tsv $(BENCH_DIR)/cpython.tsv $(BENCH_DIR)/swift.tsv

bench: deps lib bench-deps
	@start=$$(date +%s); mkdir -p $(BENCH_DIR); \
	cut -d' ' -f1-3 /proc/loadavg > $(BENCH_DIR)/loadavg 2>/dev/null || true; \
	rm -f $(BENCH_DIR)/core.tsv $(BENCH_DIR)/cpython.tsv $(BENCH_DIR)/swift.tsv; \
	$(MAKE) --no-print-directory bench-build && \
	echo "== bench: C (ContextKit)" && $(BENCH_RUN_C) && \
	echo "== bench: CPython" && $(BENCH_RUN_CPYTHON) && \
	echo "== bench: Swift" && $(BENCH_RUN_SWIFT) || exit 1; \
	echo "$$(( $$(date +%s) - start )) s" > $(BENCH_DIR)/wall; \
	echo; $(MAKE) --no-print-directory bench-table SAVE=$(SAVE); \
	echo "make bench: wall time $$(cat $(BENCH_DIR)/wall)"

# `make bench-server`: Benchmarks/Server (its own package: Hummingbird takes
# minutes to build in release mode) run as two servers on 127.0.0.1, one
# binding each request's id with ContextKit, one with @TaskLocal, loaded by
# wrk in alternating runs; scripts/bench/server.py prints requests/s, p99 and
# server CPU per request (/proc) with the ratios. Installs wrk if missing.
# BENCH_SERVER_ARGS passes options to server.py (e.g. "--pairs 5
# --duration 20", "--ck-mode withvalue"; see its --help). Not part of `ci`.
BENCH_SERVER_SCRATCH = $(BENCH_DIR)/server
BENCH_SERVER_ARGS ?=

.PHONY: bench-server bench-server-build

bench-server-build:
	@command -v wrk >/dev/null 2>&1 || { echo "make bench-server: installing wrk"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk; }
	@mkdir -p $(BENCH_DIR); scripts/fresh-scratch.sh $(BENCH_SERVER_SCRATCH)
	@echo "building Benchmarks/Server (release; Hummingbird takes minutes) ..."
	@$(SWIFT) build -c release --package-path Benchmarks/Server --scratch-path $(BENCH_SERVER_SCRATCH) \
		--product ServerBench > $(BENCH_DIR)/server-build.log 2>&1 || \
		{ cat $(BENCH_DIR)/server-build.log; exit 1; }

bench-server: bench-server-build
	$(PYTHON) scripts/bench/server.py --server $(BENCH_SERVER_SCRATCH)/release/ServerBench $(BENCH_SERVER_ARGS)

# Locked instructions and allocations per operation, counted (not timed):
# the library built with CCTX_COUNT_LOCKED (atomic.h counts each locked
# read-modify-write), a driver that wraps malloc. See docs/performance.md.
COUNT_DIR = $(BUILD)/count
COUNT_OPS = set_reset_1 set_reset_100 set_discard set_light_discard copy enter_exit local_set get request request_2000
.PHONY: count-ops
count-ops: deps
	@mkdir -p $(COUNT_DIR)
	$(CC) $(CORE_CFLAGS) -DCCTX_COUNT_LOCKED -O2 -o $(COUNT_DIR)/count_ops \
		Benchmarks/c/count_ops.c $(CORE_SRC) \
		-Wl,--wrap=malloc,--wrap=realloc,--wrap=calloc $(CK_LIBS) -lpthread
	@printf 'operation\tlocked/op\tallocs/op\tvar-count writes/op\n'
	@for op in $(COUNT_OPS); do $(COUNT_DIR)/count_ops $$op 100000; done

# DocC: symbol graphs from `swift package dump-symbol-graph` (it extracts
# them from the built modules every time, so a second `make docs` with
# nothing to recompile still has them), then the toolchain's docc, one
# archive per module (build/docs/<module>). No plugin dependency in
# Package.swift. Warnings fail the build.
DOCC ?= $(shell command -v docc 2>/dev/null || echo $(dir $(shell command -v $(SWIFT)))docc)
DOC_MODULES := ContextKit ContextKitLogging ContextKitServiceContext
docs: deps
	@rm -rf $(BUILD)/symbol-graphs $(BUILD)/docs .build/*/symbolgraph; mkdir -p $(BUILD)
	@# dump-symbol-graph reads every module of the package, the test ones too:
	@# build them first, or a fresh checkout has none to read.
	$(SWIFT) build $(TRAITS) --build-tests > $(BUILD)/docs-build.log 2>&1 || \
		{ cat $(BUILD)/docs-build.log; exit 1; }
	$(SWIFT) package $(TRAITS) dump-symbol-graph --minimum-access-level public \
		--emit-extension-block-symbols > $(BUILD)/symbol-graphs.log 2>&1 || \
		{ cat $(BUILD)/symbol-graphs.log; exit 1; }
	@set -e; for m in $(DOC_MODULES); do \
		mkdir -p $(BUILD)/symbol-graphs/$$m $(BUILD)/docs; \
		cp .build/*/symbolgraph/$$m.symbols.json $(BUILD)/symbol-graphs/$$m/; \
		for f in .build/*/symbolgraph/$$m@*.symbols.json; do \
			[ -e "$$f" ] && cp "$$f" $(BUILD)/symbol-graphs/$$m/; done; \
		echo "docc convert $$m"; \
		$(DOCC) convert Sources/$$m/$$m.docc \
			--additional-symbol-graph-dir $(BUILD)/symbol-graphs/$$m \
			--fallback-display-name $$m --fallback-bundle-identifier org.contextkit.$$m \
			--warnings-as-errors --output-path $(BUILD)/docs/$$m; \
	done
	@$(PYTHON) scripts/check-docs.py $(BUILD)/symbol-graphs $(BUILD)/docs
	@echo "documentation: $(BUILD)/docs/<module> (open index.html through a web server, or: docc preview)"

install: lib
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(CORE_DIR)/include/contextcore.h $(CORE_DIR)/include/contextcore_binding.h \
		$(CORE_DIR)/include/contextcore_inline.h \
		$(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libcontextcore.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libcontextcore.so $(DESTDIR)$(PREFIX)/lib/libcontextcore.so.$(VERSION)
	ln -sf libcontextcore.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libcontextcore.so.0
	ln -sf libcontextcore.so.0 $(DESTDIR)$(PREFIX)/lib/libcontextcore.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' contextcore.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/contextcore.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/contextcore.h $(DESTDIR)$(PREFIX)/include/contextcore_binding.h \
		$(DESTDIR)$(PREFIX)/include/contextcore_inline.h \
		$(DESTDIR)$(PREFIX)/lib/libcontextcore.* \
		$(DESTDIR)$(PREFIX)/lib/pkgconfig/contextcore.pc

clean:
	rm -rf $(BUILD) .build .build-tsan .build-asan Tests/Downstream/.build Tests/Downstream/MinimalConsumer/.build \
		Tests/Integration/.build Examples/swift/.build Benchmarks/.build \
		Benchmarks/Server/.build
