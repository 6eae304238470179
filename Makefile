# relayd - GNU make build.
#
#   make run             install missing Debian packages (as root), build,
#                        run relayd in the foreground on etc/relayd.conf
#   make test            the same install step, then every test
#   make test SANITIZE=1 the same under ASan + UBSan (separate build dir)
#   make test-fresh      `make test`, then the `make run` check, in a brand-new
#                        Debian 12 root holding only a clone of HEAD (CI runs
#                        this; tests/fresh/run says how)
#   make bench           benchmarks against Postfix (bench/RESULTS.md)
#   make fuzz NAME=scrub SECONDS=1800
#                        run tests/fuzz/fuzz_NAME.c under libFuzzer (clang,
#                        ASan + UBSan) on a copy of its corpus, then merge
#                        what adds coverage back into tests/fuzz/corpus/NAME
#   make bench-scale     relayd with 1 000 000 queued messages (bench/scale)

CC       ?= gcc
PKGS     := libuv lmdb libcares openssl opendkim
PYTHON   := /usr/bin/python3

# Debian packages the build, the tests and the benchmarks need.
DEPS_BUILD := build-essential pkg-config libuv1-dev liblmdb-dev libc-ares-dev \
              libssl-dev libopendkim-dev
# Only what today's tests use: aiosmtpd is the test smarthost, openssl
# makes the tests' throw-away CAs (dkimpy and dnsmasq come with the DKIM
# and direct-delivery work); swaks needs libnet-ssleay-perl for TLS;
# adduser makes the account test_privdrop.py drops to.
DEPS_TEST  := libcmocka-dev python3 python3-pytest swaks libnet-ssleay-perl mount \
              python3-aiosmtpd openssl adduser
# check-e2e runs the test files side by side (E2E_JOBS workers).
DEPS_TEST  += python3-pytest-xdist
DEPS_BENCH := postfix
# bench/relay --dkim: Postfix signs through Debian's opendkim milter; dkimpy
# checks both relays' signatures.
DEPS_BENCH += opendkim python3-dkim
# bench/direct: dnsmasq (tests/e2e/dnsutil.py, with dnspython) serves the
# MX records; Postfix is started in a mount namespace (unshare, mount).
DEPS_BENCH += dnsmasq-base python3-dnspython mount
# The relayctl check tests damage a spool's LMDB index with python3-lmdb.
DEPS_TEST  += python3-lmdb
# The DNS tests (tests/e2e/dnsutil.py): dnsmasq as the authoritative server
# for the zone `test`, a dnspython stub for what dnsmasq cannot answer.
DEPS_TEST  += dnsmasq-base python3-dnspython
# tests/e2e/test_packaging.py: systemd-analyze verify checks the unit; man
# formats the manual pages.
DEPS_TEST  += systemd man-db
# DKIM (tests/e2e/test_dkim.py): dkimpy verifies every signature relayd
# makes, an implementation independent of libopendkim.
DEPS_TEST  += python3-dkim
# tests/e2e/test_metrics.py: promtool (from Debian's prometheus package)
# checks what GET /metrics serves.
DEPS_TEST  += prometheus
# `make fuzz` only: clang with libFuzzer (libclang-rt-14-dev comes with it).
DEPS_FUZZ  := clang

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
# relayd-sendmail -bs's pure core, in the library for its fuzz harness.
LIB_SRC += tools/sendmail_bs.c
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB     := $(BUILD)/librelay.a

# tools/sendmail*.c are relayd-sendmail's, not relayctl's.
CTL_SRC := $(filter-out tools/sendmail%.c,$(wildcard tools/*.c))
CTL_OBJ := $(CTL_SRC:%.c=$(BUILD)/%.o)
SM_SRC  := $(filter-out tools/sendmail_bs.c,$(wildcard tools/sendmail*.c))
SM_OBJ  := $(SM_SRC:%.c=$(BUILD)/%.o)

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN  := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)

all: $(BUILD)/relayd $(BUILD)/relayctl $(BUILD)/relayd-sendmail \
     $(BUILD)/faultshim.so $(BUILD)/dnsq $(BUILD)/spfq

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

$(BUILD)/relayd-sendmail: $(SM_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) -lcmocka

# tests/dns/dnsq: queries through dns/ on a loop, for tests/e2e/test_dns.py
# (test-only, not installed).
$(BUILD)/dnsq: tests/dns/dnsq.c $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# tests/dns/spfq: one SPF check_host() through dns/spf.c, for
# tests/e2e/test_spf.py (test-only, not installed).
$(BUILD)/spfq: tests/dns/spfq.c $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# The disk-fault shim (tests/faults/faultshim.c), LD_PRELOADed by
# tests/e2e/test_durability_faults.py. Never with the sanitizers: it must
# not pull the ASan runtime into a plain relayd, and those tests skip under
# SANITIZE=1.
$(BUILD)/faultshim.so: tests/faults/faultshim.c
	@mkdir -p $(dir $@)
	$(CC) -std=c17 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -fPIC -shared \
	  -o $@ $< -ldl -lpthread

# Fuzz harnesses built with a replay main() (tests/fuzz/replay.c) so the
# corpora run as ordinary tests under the sanitizers.
$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/replay.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< tests/fuzz/replay.c $(LIB) $(LDLIBS)

# ---- libFuzzer ---------------------------------------------------------
# `make fuzz NAME=x SECONDS=n`: the library built again with clang and
# coverage instrumentation into build-fuzz/, the harness linked with
# libFuzzer's main (not replay.c). The run works on a copy of the corpus
# (build-fuzz/run-NAME/), nice'd; then -merge=1 adds to the committed
# corpus only the inputs that reach new edges (-use_counters=0: hit counts
# are not new coverage), so it stays small.
# Crashes are left in build-fuzz/run-NAME/ (crash-*), and the run fails.

FUZZ_CC    ?= clang
FUZZ_DIR   := build-fuzz
FUZZ_SAN   := -fsanitize=address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer
FUZZ_CFLAGS = -O1 -g -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -I. \
              $(PKG_CFLAGS) $(FUZZ_SAN) -MMD -MP
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FUZZ_DIR)/%.o)
SECONDS    ?= 60
FUZZ_NICE  ?= nice -n 19

$(FUZZ_DIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/librelay.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_DIR)/librelay.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< \
	  $(FUZZ_DIR)/librelay.a $(LDLIBS)

deps-fuzz:
	@missing="$(call missing_pkgs,$(DEPS_FUZZ))"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages: $$missing (run as root)"; exit 1; \
	  fi; \
	fi

fuzz: deps-fuzz
	@test -n "$(NAME)" -a -f tests/fuzz/fuzz_$(NAME).c || { \
	  echo "usage: make fuzz NAME=<name> [SECONDS=60]; names:" \
	    $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC)); exit 2; }
	@$(MAKE) --no-print-directory $(FUZZ_DIR)/fuzz_$(NAME)
	@rm -rf $(FUZZ_DIR)/run-$(NAME) && mkdir -p $(FUZZ_DIR)/run-$(NAME)/corpus
	@cp tests/fuzz/corpus/$(NAME)/* $(FUZZ_DIR)/run-$(NAME)/corpus/
	cd $(FUZZ_DIR)/run-$(NAME) && { $(FUZZ_NICE) ../fuzz_$(NAME) \
	  -max_total_time=$(SECONDS) -print_final_stats=1 \
	  -artifact_prefix=./ corpus >fuzz.log 2>&1; rc=$$?; \
	  grep -E '^#[0-9]+.*(pulse|DONE)|ERROR|SUMMARY|stat::' fuzz.log \
	    | tail -30; exit $$rc; }
	$(FUZZ_NICE) $(FUZZ_DIR)/fuzz_$(NAME) -merge=1 -use_counters=0 \
	  tests/fuzz/corpus/$(NAME) \
	  $(FUZZ_DIR)/run-$(NAME)/corpus 2>&1 | tail -2

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

# The development instance runs as whoever runs make. As root it stays
# root, explicitly (RELAYD_USER=root overrides `user`, default relayd):
# a checkout under a 0700 home would be out of the relayd account's reach,
# and a fresh machine has no such account before `make install`.
run: build
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "make run: running the development relayd as root (RELAYD_USER=root); an installed relayd runs as the relayd account"; \
	  export RELAYD_USER=root; \
	fi; \
	exec ./$(BUILD)/relayd -c etc/relayd.conf

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

# The e2e tests mostly wait (on relayd, servers, timers): E2E_JOBS pytest
# workers (pytest-xdist) run them side by side, one test file per worker at
# a time (each file's servers and fixtures stay in one process). Every test
# already uses its own ports, addresses and directories. E2E_JOBS=1: one
# after the other, as before.
E2E_JOBS ?= 3
E2E_XDIST = $(if $(filter-out 0 1,$(E2E_JOBS)),-n $(E2E_JOBS) --dist loadfile)
check-e2e: all
	RELAYD_BIN=$(CURDIR)/$(BUILD)/relayd RELAYCTL_BIN=$(CURDIR)/$(BUILD)/relayctl \
	SANITIZE=$(SANITIZE) $(PYTHON) -m pytest -q -p no:cacheprovider \
	  $(E2E_XDIST) --durations=10 tests/e2e

# What CI runs: the README's two commands on a machine that has nothing
# installed by hand (tests/fresh/run).
test-fresh:
	tests/fresh/run make test

bench: deps-bench all
	bench/accept
	bench/relay

# Direct delivery to MX hosts on 127.9.0.x, DNS from dnsmasq: relayd vs
# Postfix, and relayd's smarthost rate, in one run (bench/README.md).
bench-direct: deps-bench all
	bench/direct
.PHONY: bench-direct

# Memory per connection: 5 000 idle ones, 200 that flood and never read
# (no Postfix needed; bench/RESULTS.md).
bench-conns: all
	bench/conns

# Also the relayd system account (relayd drops to it after binding) and
# the spool, its own. With DESTDIR (packaging) no account is made and the
# spool is left to the package's maintainer scripts.
#
# relayd-sendmail (Postfix's postdrop model): setgid to the group
# relayd-drop, which may create files in SPOOL/maildrop (relayd's, mode
# 1730) and nothing else; the spool is 0711 so that the group can reach
# it. relayd's account joins relayd-drop so that relayd, after dropping
# privileges, can keep the maildrop's group. /usr/sbin/sendmail becomes a
# link to it only when nothing provides that file (another MTA does).
PREFIX  ?= /usr/local
INSTALL_USER := relayd
# make install [PREFIX=/usr/local] [DESTDIR=...]: the programs, the manual
# pages, the example configuration (never over an existing one), the
# systemd unit (its paths follow PREFIX), the relayd account and the spool.
# Under DESTDIR (packaging) the account and ownership steps are skipped and
# printed, for the package's maintainer scripts to do.
DROP_GROUP   := relayd-drop
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR  ?= $(PREFIX)/share/man
install: all
	install -D -m 0755 $(BUILD)/relayd $(DESTDIR)$(PREFIX)/sbin/relayd
	install -D -m 0755 $(BUILD)/relayctl $(DESTDIR)$(PREFIX)/bin/relayctl
	install -D -m 0755 $(BUILD)/relayd-sendmail \
	  $(DESTDIR)$(PREFIX)/sbin/relayd-sendmail
	install -D -m 0644 contrib/man/relayd.8 $(DESTDIR)$(MANDIR)/man8/relayd.8
	install -D -m 0644 contrib/man/relayctl.8 $(DESTDIR)$(MANDIR)/man8/relayctl.8
	install -D -m 0644 contrib/man/relayd-sendmail.8 \
	  $(DESTDIR)$(MANDIR)/man8/relayd-sendmail.8
	install -D -m 0644 contrib/man/relayd.conf.5 $(DESTDIR)$(MANDIR)/man5/relayd.conf.5
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/sbin/relayd|$(PREFIX)/sbin/relayd|g' \
	  -e 's|/usr/local/bin/relayctl|$(PREFIX)/bin/relayctl|g' contrib/relayd.service \
	  > $(DESTDIR)$(UNITDIR)/relayd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/relayd.service
	@if [ ! -e $(DESTDIR)/etc/relayd/relayd.conf ]; then \
	  install -D -m 0644 etc/relayd.conf $(DESTDIR)/etc/relayd/relayd.conf; \
	  sed -i 's|^spool_dir = .*|spool_dir = /var/spool/relayd|' \
	    $(DESTDIR)/etc/relayd/relayd.conf; fi
ifeq ($(DESTDIR),)
	@if ! getent passwd $(INSTALL_USER) >/dev/null; then \
	  if command -v adduser >/dev/null; then \
	    adduser --system --group --home /var/spool/relayd --no-create-home \
	      $(INSTALL_USER); \
	  else \
	    useradd --system --user-group --home-dir /var/spool/relayd \
	      --no-create-home --shell /usr/sbin/nologin $(INSTALL_USER); \
	  fi; \
	  echo "install: created the system account $(INSTALL_USER)"; fi
	@if ! getent group $(DROP_GROUP) >/dev/null; then \
	  if command -v addgroup >/dev/null; then addgroup --system $(DROP_GROUP); \
	  else groupadd --system $(DROP_GROUP); fi; \
	  echo "install: created the group $(DROP_GROUP)"; fi
	@id -nG $(INSTALL_USER) | tr ' ' '\n' | grep -qx $(DROP_GROUP) || \
	  usermod -a -G $(DROP_GROUP) $(INSTALL_USER)
	chgrp $(DROP_GROUP) $(PREFIX)/sbin/relayd-sendmail
	chmod 2755 $(PREFIX)/sbin/relayd-sendmail
	install -d -m 0711 -o $(INSTALL_USER) -g $(INSTALL_USER) /var/spool/relayd
	install -d -m 1730 -o $(INSTALL_USER) -g $(DROP_GROUP) \
	  /var/spool/relayd/maildrop
	@if [ -e /usr/sbin/sendmail ] || [ -L /usr/sbin/sendmail ]; then \
	  echo "install: /usr/sbin/sendmail exists ($$(readlink -f /usr/sbin/sendmail)); left alone: another MTA provides it"; \
	else ln -s $(PREFIX)/sbin/relayd-sendmail /usr/sbin/sendmail; \
	  echo "install: /usr/sbin/sendmail -> $(PREFIX)/sbin/relayd-sendmail"; fi
	@# relayd (as its account) reads the credentials through the group;
	@# relayctl user keeps an existing file's owner, group and mode.
	@if [ ! -e /etc/relayd/credentials ]; then \
	  install -m 0640 -o root -g $(INSTALL_USER) /dev/null /etc/relayd/credentials; fi
	@if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload; fi
else
	install -d -m 0711 $(DESTDIR)/var/spool/relayd
	install -d -m 1730 $(DESTDIR)/var/spool/relayd/maildrop
	@echo "install: DESTDIR is set: skipped, for the package to do:"
	@echo "  create the system account: adduser --system --group --home /var/spool/relayd --no-create-home $(INSTALL_USER)"
	@echo "  create the group $(DROP_GROUP) with $(INSTALL_USER) a member; chgrp $(DROP_GROUP) + chmod 2755 $(PREFIX)/sbin/relayd-sendmail"
	@echo "  chown $(INSTALL_USER):$(INSTALL_USER) /var/spool/relayd; chown $(INSTALL_USER):$(DROP_GROUP) /var/spool/relayd/maildrop"
	@echo "  link /usr/sbin/sendmail to $(PREFIX)/sbin/relayd-sendmail when no other MTA provides it"
	@echo "  install -m 0640 -o root -g $(INSTALL_USER) /dev/null /etc/relayd/credentials"
	@echo "  systemctl daemon-reload"
endif

# relayd.conf(5) is made from etc/relayd.conf (the commented reference of
# every key); the result is committed, and a test checks it is current.
man:
	contrib/man/mkconf5 etc/relayd.conf > contrib/man/relayd.conf.5

clean:
	rm -rf build build-san build-fuzz

.PHONY: all deps deps-bench build run test test-fresh unit-bins check-unit check-e2e bench bench-conns install man clean fuzz deps-fuzz

-include $(LIB_OBJ:.o=.d) $(CTL_OBJ:.o=.d) $(SM_OBJ:.o=.d) $(BUILD)/smtpd/relayd.d \
         $(wildcard $(FUZZ_DIR)/*/*.d)

# bench/fill_queue: a spool with N messages, to time relayctl on it.
bench-fill: $(BUILD)/bench/fill_queue
$(BUILD)/bench/fill_queue: bench/fill_queue.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)
.PHONY: bench-fill

# bench/dkim_cost: microseconds per DKIM signature (bench/RESULTS.md).
bench-dkim: $(BUILD)/bench/dkim_cost
$(BUILD)/bench/dkim_cost: bench/dkim_cost.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)
.PHONY: bench-dkim

# bench/scale: relayd holding 1 000 000 messages (bench/README.md).
bench-scale: deps-bench all bench-fill
	bench/scale
.PHONY: bench-scale
