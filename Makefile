# ContextKit — build, test and run everything from here.
#
#   make            libcontextcore.a, libcontextcore.so and contextcore.pc in build/
#   make deps       install what is missing (Debian: libck-dev, libcmocka-dev, valgrind)
#   make test       deps, build, run the C tests and `swift test`
#   make ci         make test, then the C tests under ASan+UBSan, TSan and
#                   valgrind, and `swift test` under TSan and ASan
#   make demo       build and run the examples (Swift and C)
#   make bench      build and run the benchmarks; prints one table
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
CORE_HDR := $(wildcard $(CORE_DIR)/*.h) $(CORE_DIR)/include/contextcore.h
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
TEST_CFLAGS = -std=gnu11 -D_GNU_SOURCE $(WARN) -I$(CORE_DIR)/include -I$(CORE_DIR) \
	-ITests/C/support $(CK_CFLAGS)
TEST_LIBS = $(CMOCKA_LIBS) $(CK_LIBS) -lpthread -lm

.PHONY: all lib deps test ci c-test swift-test c-asan c-tsan c-valgrind \
	swift-tsan swift-asan demo bench install install-test uninstall clean docs

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

$(BUILD)/obj $(BUILD)/tests $(BUILD)/asan $(BUILD)/tsan:
	@mkdir -p $@

CORE_OBJ = $(patsubst $(CORE_DIR)/%.c,$(BUILD)/obj/%.o,$(CORE_SRC))

$(BUILD)/libcontextcore.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libcontextcore.so: $(CORE_OBJ)
	$(CC) -shared -Wl,-soname,libcontextcore.so.0 -o $@ $^ $(CK_LIBS) -lpthread

$(BUILD)/contextcore.pc: contextcore.pc.in Makefile | $(BUILD)/obj
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

# ---------------------------------------------------------------- C tests
$(BUILD)/tests/%: Tests/C/%.c $(C_TEST_COMMON) $(BUILD)/libcontextcore.a | $(BUILD)/tests
	$(CC) $(TEST_CFLAGS) -O1 -g -o $@ $< $(C_TEST_COMMON) $(BUILD)/libcontextcore.a $(TEST_LIBS)

c-test: lib $(addprefix $(BUILD)/tests/,$(C_TESTS))
	@set -e; for t in $(C_TESTS); do echo "== $$t"; $(BUILD)/tests/$$t; done

# Sanitizer builds compile the library sources straight into each test.
SAN_SRC = $(CORE_SRC) $(C_TEST_COMMON)

$(BUILD)/asan/%: Tests/C/%.c $(CORE_SRC) $(CORE_HDR) $(C_TEST_COMMON) | $(BUILD)/asan
	gcc $(TEST_CFLAGS) -I$(CORE_DIR) -O1 -g -fno-omit-frame-pointer \
		-fsanitize=address,undefined -fno-sanitize-recover=all \
		-o $@ $< $(SAN_SRC) $(TEST_LIBS)

$(BUILD)/tsan/%: Tests/C/%.c $(CORE_SRC) $(CORE_HDR) $(C_TEST_COMMON) | $(BUILD)/tsan
	gcc $(TEST_CFLAGS) -I$(CORE_DIR) -O1 -g -fsanitize=thread \
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
		CCTX_TEST_SCALE=$${CCTX_TEST_SCALE:-5} valgrind -q --leak-check=full \
		--errors-for-leak-kinds=definite,indirect,possible --show-leak-kinds=definite,indirect,possible \
		--error-exitcode=99 $(BUILD)/tests/$$t; done

# ---------------------------------------------------------------- Swift
swift-test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test

swift-tsan: deps
	$(SWIFT) test --sanitize=thread --scratch-path .build-tsan

swift-asan: deps
	$(SWIFT) test --sanitize=address --scratch-path .build-asan

# ---------------------------------------------------------------- top level
test: deps lib c-test install-test swift-test

ci: test c-asan c-tsan c-valgrind swift-tsan swift-asan
	@echo "make ci: all stages passed"

EXAMPLES_C := $(sort $(basename $(notdir $(wildcard Examples/c/*.c))))

$(BUILD)/examples/%: Examples/c/%.c $(BUILD)/libcontextcore.a $(CORE_DIR)/include/contextcore.h
	@mkdir -p $(BUILD)/examples
	$(CC) -std=c11 -Wall -Wextra -O2 -I$(CORE_DIR)/include -o $@ $< $(BUILD)/libcontextcore.a $(CK_LIBS) -lpthread

demo: deps lib $(addprefix $(BUILD)/examples/,$(EXAMPLES_C))
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
	done; echo "install-test (examples built with only pkg-config against the installed copy, then run):"; \
	echo "$$n passed, 0 failed"

bench: deps lib
	@echo "make bench: the benchmark arrives with the performance issue"

install: lib
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(CORE_DIR)/include/contextcore.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libcontextcore.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libcontextcore.so $(DESTDIR)$(PREFIX)/lib/libcontextcore.so.$(VERSION)
	ln -sf libcontextcore.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libcontextcore.so.0
	ln -sf libcontextcore.so.0 $(DESTDIR)$(PREFIX)/lib/libcontextcore.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' contextcore.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/contextcore.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/contextcore.h $(DESTDIR)$(PREFIX)/lib/libcontextcore.* \
		$(DESTDIR)$(PREFIX)/lib/pkgconfig/contextcore.pc

clean:
	rm -rf $(BUILD) .build .build-tsan .build-asan
