# relayd - GNU make build.
#
#   make run             install missing Debian packages (as root), build,
#                        run relayd in the foreground on etc/relayd.conf
#   make test            the same install step, then every test
#   make test SANITIZE=1 the same under ASan + UBSan (separate build dir)
#   make bench           benchmarks against Postfix (bench/RESULTS.md)

CC       ?= gcc
PKGS     := libuv lmdb libcares openssl opendkim
PYTHON   := /usr/bin/python3

# Debian packages the build, the tests and the benchmarks need.
DEPS_BUILD := build-essential pkg-config libuv1-dev liblmdb-dev libc-ares-dev \
              libssl-dev libopendkim-dev
# Only what today's tests use: aiosmtpd is the test smarthost, openssl
# makes the tests' throw-away CAs (dkimpy and dnsmasq come with the DKIM
# and direct-delivery work).
DEPS_TEST  := libcmocka-dev python3 python3-pytest swaks libnet-ssleay-perl mount \
              python3-aiosmtpd openssl
DEPS_BENCH := postfix

ifeq ($(SANITIZE),1)
BUILD    := build-san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all \
            -fno-omit-frame-pointer
OPT      := -O1
else
BUILD    := build
SANFLAGS :=
OPT      := -O2
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -I. $(PKG_CFLAGS) \
           $(SANFLAGS) -MMD -MP
LDFLAGS += $(SANFLAGS)
LDLIBS  += $(PKG_LIBS) -lpthread

# Library code: every module's .c file except the programs' main()s.
LIB_SRC := $(wildcard common/*.c queue/*.c smtpd/*.c deliver/*.c dkim/*.c dns/*.c)
LIB_SRC := $(filter-out smtpd/relayd.c,$(LIB_SRC))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB     := $(BUILD)/librelay.a

CTL_SRC := $(wildcard tools/*.c)
CTL_OBJ := $(CTL_SRC:%.c=$(BUILD)/%.o)

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN  := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)

all: $(BUILD)/relayd $(BUILD)/relayctl

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/relayd: $(BUILD)/smtpd/relayd.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/relayctl: $(CTL_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) -lcmocka

# Fuzz harnesses built with a replay main() (tests/fuzz/replay.c) so the
# corpora run as ordinary tests under the sanitizers.
$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/replay.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< tests/fuzz/replay.c $(LIB) $(LDLIBS)

# ---- dependencies ------------------------------------------------------

define missing_pkgs
$(shell for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
  | grep -q 'install ok installed' || echo $$p; done)
endef

deps:
	@missing="$(call missing_pkgs,$(DEPS_BUILD) $(DEPS_TEST))"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing: $$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages: $$missing"; \
	    echo "run 'sudo make deps' or: sudo apt-get install $$missing"; exit 1; \
	  fi; \
	fi

deps-bench: deps
	@missing="$(call missing_pkgs,$(DEPS_BENCH))"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages: $$missing (run as root)"; exit 1; \
	  fi; \
	fi

# ---- entry points --------------------------------------------------------

build: deps
	@$(MAKE) --no-print-directory all

run: build
	@mkdir -p var/spool
	./$(BUILD)/relayd -c etc/relayd.conf

# In CI (CI=true) the suite runs twice: plain, then under ASan + UBSan.
test: deps
	@$(MAKE) --no-print-directory all unit-bins
	@$(MAKE) --no-print-directory check-unit
	@$(MAKE) --no-print-directory check-e2e
ifeq ($(CI)$(SANITIZE),true)
	@echo "== CI: the same suite under ASan + UBSan"
	@$(MAKE) --no-print-directory test SANITIZE=1
endif

unit-bins: $(UNIT_BIN) $(FUZZ_BIN)

check-unit: $(UNIT_BIN) $(FUZZ_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f); \
	  echo "== $$f tests/fuzz/corpus/$${n#fuzz_}"; \
	  $$f tests/fuzz/corpus/$${n#fuzz_}; done

check-e2e: all
	RELAYD_BIN=$(CURDIR)/$(BUILD)/relayd RELAYCTL_BIN=$(CURDIR)/$(BUILD)/relayctl \
	SANITIZE=$(SANITIZE) $(PYTHON) -m pytest -q -p no:cacheprovider tests/e2e

bench: deps-bench all
	bench/accept
	bench/relay

# Memory per connection: 5 000 idle ones, 200 that flood and never read
# (no Postfix needed; bench/RESULTS.md).
bench-conns: all
	bench/conns

PREFIX  ?= /usr/local
install: all
	install -D -m 0755 $(BUILD)/relayd $(DESTDIR)$(PREFIX)/sbin/relayd
	install -D -m 0755 $(BUILD)/relayctl $(DESTDIR)$(PREFIX)/bin/relayctl
	@if [ ! -e $(DESTDIR)/etc/relayd/relayd.conf ]; then \
	  install -D -m 0644 etc/relayd.conf $(DESTDIR)/etc/relayd/relayd.conf; \
	  sed -i 's|^spool_dir = .*|spool_dir = /var/spool/relayd|' \
	    $(DESTDIR)/etc/relayd/relayd.conf; fi

clean:
	rm -rf build build-san

.PHONY: all deps deps-bench build run test unit-bins check-unit check-e2e bench bench-conns install clean

-include $(LIB_OBJ:.o=.d) $(CTL_OBJ:.o=.d) $(BUILD)/smtpd/relayd.d

# bench/fill_queue: a spool with N messages, to time relayctl on it.
bench-fill: $(BUILD)/bench/fill_queue
$(BUILD)/bench/fill_queue: bench/fill_queue.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)
.PHONY: bench-fill
