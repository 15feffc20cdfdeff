# dropline: the two commands of the quick start (make run, make test) and the benchmark.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNDIR ?= var

.PHONY: run test lint typecheck unit venv clean install uninstall wheelhouse soak bench postgresql-server \
	writer-tools lock test-newest

# The environments are built from the lock files in requirements/ (make lock writes
# them from pyproject.toml): run.txt for running, test.txt for running and testing.
# Each is built from nothing, so it holds exactly the locked versions; a newer lock
# or pyproject.toml builds it again.  .venv/.lock names the lock it was built from.
LOCK_RUN  := requirements/run.txt
LOCK_TEST := requirements/test.txt

define fresh_env
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "dropline needs Python 3.11 or newer ($(PYTHON) is older)" >&2; exit 1; }
	rm -rf $(VENV)
	@$(PYTHON) -m venv $(VENV) || \
	  { echo "could not create a virtual environment: on Debian or Ubuntu, 'apt install python3-venv'" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --require-hashes -r $(1)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@echo $(1) > $(VENV)/.lock
endef

$(VENV)/.run: pyproject.toml $(LOCK_RUN)
	$(call fresh_env,$(LOCK_RUN))
	@touch $@

# The test environment serves make run too: it holds everything run.txt does.
$(VENV)/.test: pyproject.toml $(LOCK_TEST)
	$(call fresh_env,$(LOCK_TEST))
	@touch $@ $(VENV)/.run

venv: $(VENV)/.test

# Run the daemon in the foreground on ./var with the example configuration.  Its
# configuration is written once; an operator's edits of var/dropline.yaml stay.
run: $(VENV)/.run
	@mkdir -p $(RUNDIR)/data/incoming $(RUNDIR)/data/working $(RUNDIR)/data/archive \
	  $(RUNDIR)/data/failed $(RUNDIR)/state
	@if [ -e $(RUNDIR)/dropline.yaml ]; then \
	  echo "dropline: using the existing $(RUNDIR)/dropline.yaml (remove it for a fresh copy of the example)"; \
	else \
	  sed -e "s|/opt/automation/data|$(CURDIR)/$(RUNDIR)/data|" \
	      -e "s|/var/lib/dropline|$(CURDIR)/$(RUNDIR)/state|" \
	      -e "s|/opt/automation/pipelines|$(CURDIR)/config/pipelines|" \
	      config/dropline.yaml > $(RUNDIR)/dropline.yaml && \
	  echo "dropline: wrote $(RUNDIR)/dropline.yaml from config/dropline.yaml"; \
	fi
	@echo "dropline: drop files into $(CURDIR)/$(RUNDIR)/data/incoming/"
	@echo "dropline: they end in $(CURDIR)/$(RUNDIR)/data/archive/ or $(CURDIR)/$(RUNDIR)/data/failed/"
	@echo "dropline: configuration $(CURDIR)/$(RUNDIR)/dropline.yaml; Ctrl-C stops"
	@echo "dropline: try the example: cp config/samples/*.csv $(RUNDIR)/data/incoming/"
	@echo "dropline:   then: $(BIN)/dropline status --config $(RUNDIR)/dropline.yaml"
	@echo "dropline:   and:  sqlite3 $(RUNDIR)/state/orders.db 'SELECT * FROM orders'"
	$(BIN)/dropline run --config $(RUNDIR)/dropline.yaml

# make lock: the lock files again from pyproject.toml and requirements/build.in, with
# uv's universal resolver (one lock for every Python dropline supports, hashes of
# every file).  Versions already locked are kept unless pyproject.toml excludes them;
# UPGRADE=1 takes the newest allowed of everything, UPGRADE=NAME of one package.
UV_VERSION ?= 0.13.9
LOCK_VENV  := .venv-lock
UV_COMPILE  = $(LOCK_VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" \
	$(if $(filter 1,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade-package $(UPGRADE)))

lock:
	@[ -x $(LOCK_VENV)/bin/uv ] && $(LOCK_VENV)/bin/uv --version | grep -q " $(UV_VERSION) " || \
	  { rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV) && \
	    $(LOCK_VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION); }
	$(UV_COMPILE) --extra test pyproject.toml requirements/build.in -o $(LOCK_TEST)
	$(UV_COMPILE) pyproject.toml requirements/build.in -c $(LOCK_TEST) -o $(LOCK_RUN)
	@echo "lock: $(LOCK_RUN) and $(LOCK_TEST) written; make test builds from them"

# The unit tests (not the booted-systemd tier) in an environment of the NEWEST
# versions that pyproject.toml allows, made anew each time: an upstream release
# that breaks dropline fails here before a lock that takes it is written.  When the
# newest versions are, every one, those of the lock that make test's environment
# holds, make test has run these very tests against them: they are not run twice
# (the versions are printed either way, and those that differ when they do).
NEWEST_VENV := .venv-newest
test-newest: postgresql-server writer-tools
	rm -rf $(NEWEST_VENV)
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	@$(NEWEST_VENV)/bin/python -m pip list --format=freeze --exclude-editable \
	  > $(NEWEST_VENV)/versions.txt 2>/dev/null
	@echo "test-newest: the versions under test:"
	@sed 's/^/  /' $(NEWEST_VENV)/versions.txt
	@if [ -x $(BIN)/python ] && [ -f $(VENV)/.test ] && $(BIN)/python -m pip list --format=freeze \
	    --exclude-editable 2>/dev/null | cmp -s - $(NEWEST_VENV)/versions.txt; then \
	  echo "test-newest: every newest version is the locked one ($$(cat $(VENV)/.lock)) that"; \
	  echo "  make test's environment holds: make test ran these tests against them already"; \
	else \
	  echo "test-newest: newer than the lock ($(LOCK_TEST)):"; \
	  { [ -x $(BIN)/python ] && $(BIN)/python -m pip list --format=freeze --exclude-editable \
	      2>/dev/null || true; } | diff - $(NEWEST_VENV)/versions.txt | sed -n 's/^> /  /p'; \
	  $(NEWEST_VENV)/bin/mypy && \
	  $(NEWEST_VENV)/bin/$(COMPILE) && \
	  $(NEWEST_VENV)/bin/$(PYTEST) -n $(TEST_JOBS) -m "not serial" --ignore=tests/e2e && \
	  $(NEWEST_VENV)/bin/$(PYTEST) -m serial --ignore=tests/e2e; \
	fi

lint: venv
	$(BIN)/ruff check daemon tests config/pipelines
	$(BIN)/ruff format --check daemon tests config/pipelines

typecheck: venv
	$(BIN)/mypy

# The postgres-load tests start a PostgreSQL server of their own (tests/pg.py). As root,
# Debian's server is installed when initdb and pg_ctl are missing; where it cannot be,
# those tests skip, saying what was missing.
postgresql-server:
	@for b in /usr/lib/postgresql/*/bin; do [ -x "$$b/initdb" ] && [ -x "$$b/pg_ctl" ] && exit 0; done; \
	  { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 && exit 0; \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || exit 0; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && \
	    apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1; } || \
	  echo "test: could not install postgresql; the postgres-load tests are skipped"

# The tier of real writers (tests/test_real_writers.py) runs the tools operators write
# into incoming/ with, and strace to hold a tool's race window open; promtool (Debian's
# prometheus package) checks the alert rules and the dashboard shipped in config/, and
# tmux is the real terminal `dropline top` is tested in.  As
# root, Debian's packages of those missing are installed (COMMAND:PACKAGE); where they
# cannot be, the tests that need them skip, naming the tool.
WRITER_TOOLS := rsync:rsync vim.tiny:vim-tiny sqlite3:sqlite3 tar:tar unzip:unzip zip:zip \
	curl:curl wget:wget gzip:gzip strace:strace promtool:prometheus tmux:tmux zsh:zsh
writer-tools:
	@missing=""; for t in $(WRITER_TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	  [ -n "$$missing" ] || exit 0; \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || \
	  { echo "test: not installed:$$missing; the real-writer tests that need them are skipped"; exit 0; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1; } || \
	  echo "test: could not install$$missing; the real-writer tests that need them are skipped"

# The tests start hundreds of daemons, stage children and movers: dropline's
# bytecode is compiled once here, as an installed dropline has it, so that no
# start compiles it again where the environment forbids writing it
# (PYTHONDONTWRITEBYTECODE).  A stale file is simply recompiled in memory.
COMPILE = python -m compileall -q daemon/dropline tests

# The tests run on TEST_JOBS workers (pytest-xdist): most of their time is spent
# waiting on daemons, stages and deadlines, so two workers on two cores take about
# 0.6 of the time one does.  Then, alone, the tests marked serial: the booted-systemd
# tier (one boot, its tests in order) and those that change a setting of the whole
# machine.  TEST_JOBS=0 runs the first part in this process too.
TEST_JOBS ?= 2
PYTEST = python -m pytest --durations=15

unit: venv postgresql-server writer-tools
	$(BIN)/$(COMPILE)
	$(BIN)/$(PYTEST) -n $(TEST_JOBS) -m "not serial"
	$(BIN)/$(PYTEST) -m serial

test: lint typecheck unit

# The long crash soak (10,000 files, dozens of SIGKILLs) and a burst of 20,000 files;
# make test runs a short soak and a burst of 5,000.
# DROPLINE_SOAK_SEED=N replays a schedule the soak printed.  Then the real writers'
# plain repetitions (sed -i 2,000 times, a file rewritten 300 times, sqlite3 over many
# transactions, vim saving 50 times), and 100,000 files through the installed service,
# every end in the journal (as root: the booted-systemd tier).
soak: venv writer-tools
	DROPLINE_SOAK=long $(BIN)/python -m pytest tests/test_soak.py -q -s
	DROPLINE_SOAK=long $(BIN)/python -m pytest tests/test_burst.py -q -s -k burst_of_files
	DROPLINE_SOAK=long $(BIN)/python -m pytest tests/test_real_writers.py -q -rxX -k soak
	DROPLINE_SOAK=long $(BIN)/python -m pytest tests/e2e/test_journal_burst.py -q -s -k soak

# The benchmark (tests/bench): dropline against reference loops on the same workloads, one
# table, also written as markdown to var/bench.md (BENCH_OUT=FILE).  It takes minutes: a
# million files are created and drained.  BENCH_QUICK=1 skips the million and runs the stage
# workloads (real stages against the scripts in tests/bench/refs) on fewer files; BENCH_SIZES=N,BIG
# sets both backlogs; BENCH_ONLY=live,stalled runs only those workloads (python -m tests.bench
# --help lists them); BENCH_DIR=DIR puts the data elsewhere than /tmp.  inotify-tools is
# installed for the inotifywait loop when missing and run as root; without it that column is
# skipped.
bench: venv
	@command -v inotifywait >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  apt-get install -y -qq inotify-tools >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq inotify-tools >/dev/null 2>&1; } || \
	  echo "bench: could not install inotify-tools; the inotifywait loop is skipped"
	$(BIN)/python -m tests.bench $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

clean:
	rm -rf $(VENV) $(NEWEST_VENV) $(LOCK_VENV) $(RUNDIR) .mypy_cache .pytest_cache .ruff_cache

# --- Installing as a service (root) ----------------------------------------
# sudo make install: dropline into its own virtual environment under PREFIX,
# the units, sysusers.d and tmpfiles.d files, an example configuration (never
# overwriting one that exists).  WHEELHOUSE=DIR installs from wheels built
# beforehand (make wheelhouse) instead of the package index.
PREFIX          ?= /opt/automation/dropline
BINDIR          ?= /usr/local/bin
MANDIR          ?= /usr/local/share/man
BASHCOMPDIR     ?= /usr/share/bash-completion/completions
ZSHCOMPDIR      ?= /usr/local/share/zsh/site-functions
CONFDIR         ?= /etc/dropline
PIPELINESDIR    ?= /opt/automation/pipelines
UNITDIR         ?= /etc/systemd/system
SYSUSERSDIR     ?= /etc/sysusers.d
TMPFILESDIR     ?= /etc/tmpfiles.d
INSTALL_PYTHON  ?= /usr/bin/python3
WHEELHOUSE      ?=
# Dependencies from the lock, their hashes checked (from the wheelhouse when given),
# then dropline itself without dependencies, built with the locked setuptools.
# --force-reinstall: a rebuilt wheel of an unchanged version would otherwise be
# "already satisfied" and the old code would stay installed.
PIP_FROM         = $(if $(WHEELHOUSE),--no-index --find-links $(WHEELHOUSE))
DROPLINE_SOURCE  = $(if $(WHEELHOUSE),$(wildcard $(WHEELHOUSE)/dropline-*.whl),--no-build-isolation .)
UNITS            = dropline.service dropline-prune.service dropline-prune.timer

# What make install WHEELHOUSE=wheelhouse needs on a host without the package index:
# the locked files themselves (their hashes are checked again there) and dropline's
# wheel.  rm -rf build: setuptools keeps modules deleted from daemon/ in build/lib.
wheelhouse: $(VENV)/.run
	rm -rf build wheelhouse
	$(BIN)/python -m pip download --quiet --require-hashes -r $(LOCK_RUN) --dest wheelhouse
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir wheelhouse .

install:
	@test "$$(id -u)" = 0 || { echo "make install must run as root (sudo make install)" >&2; exit 1; }
	@test -x $(INSTALL_PYTHON) || { echo "$(INSTALL_PYTHON) not found: apt install python3 python3-venv" >&2; exit 1; }
	@test -z "$(WHEELHOUSE)" || test -n "$(DROPLINE_SOURCE)" || \
	  { echo "no dropline wheel in $(WHEELHOUSE): make wheelhouse first" >&2; exit 1; }
	$(INSTALL_PYTHON) -m venv $(PREFIX)
	$(if $(WHEELHOUSE),,rm -rf build)
	$(PREFIX)/bin/python -m pip install --quiet $(PIP_FROM) --require-hashes -r $(LOCK_RUN)
	$(PREFIX)/bin/python -m pip install --quiet $(PIP_FROM) --no-deps --force-reinstall $(DROPLINE_SOURCE)
	$(PREFIX)/bin/python -m pip check
	@# `dropline` on PATH: a link to the program in its environment (the README's commands).
	install -d -m 0755 $(BINDIR)
	ln -sfn $(PREFIX)/bin/dropline $(BINDIR)/dropline
	@# The manual page and the completions, made from the installed parser.
	install -d -m 0755 $(MANDIR)/man1 $(BASHCOMPDIR) $(ZSHCOMPDIR)
	@# Each written aside, then renamed into place: a failure leaves no empty file.
	for m in man:$(MANDIR)/man1/dropline.1 bash:$(BASHCOMPDIR)/dropline \
	    zsh:$(ZSHCOMPDIR)/_dropline; do \
	  $(PREFIX)/bin/python -m dropline.manual $${m%%:*} > $${m#*:}.tmp && \
	  chmod 0644 $${m#*:}.tmp && mv -f $${m#*:}.tmp $${m#*:} || exit 1; done
	install -m 0644 README.md $(PREFIX)/README.md
	install -d -m 0755 $(UNITDIR) $(SYSUSERSDIR) $(TMPFILESDIR)
	for u in $(UNITS); do install -m 0644 units/$$u $(UNITDIR)/$$u; done
	install -m 0644 units/dropline.sysusers $(SYSUSERSDIR)/dropline.conf
	install -m 0644 units/dropline.tmpfiles $(TMPFILESDIR)/dropline.conf
	systemd-sysusers $(SYSUSERSDIR)/dropline.conf
	systemd-tmpfiles --create $(TMPFILESDIR)/dropline.conf
	@# Readable by everyone: it holds no secrets (they are credentials, README "Secrets"),
	@# and so `dropline status` tells a user outside dropline-readers which group to join
	@# rather than that the configuration is unreadable (README, "Read-only access").
	install -d -m 0755 $(CONFDIR)
	@if [ -e $(CONFDIR)/dropline.yaml ]; then \
	  echo "kept the existing $(CONFDIR)/dropline.yaml"; \
	else \
	  install -m 0644 config/dropline.yaml $(CONFDIR)/dropline.yaml; \
	  echo "installed an example $(CONFDIR)/dropline.yaml"; \
	fi
	@# The example's own stages and the template; an operator's folder is never overwritten.
	install -d -m 0755 $(PIPELINESDIR)
	@for d in config/pipelines/*/; do n=$$(basename $$d); \
	  if [ -e $(PIPELINESDIR)/$$n ]; then echo "kept the existing $(PIPELINESDIR)/$$n"; \
	  else cp -r $$d $(PIPELINESDIR)/$$n && chmod -R u=rwX,go=rX $(PIPELINESDIR)/$$n; fi; done
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; \
	else echo "systemd is not running: skipped systemctl daemon-reload"; fi
	@echo "dropline installed in $(PREFIX); start it with: systemctl enable --now dropline"

# sudo make uninstall: the program and the units go; data, state and
# configuration stay.  PURGE=1 removes those too.
uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall must run as root" >&2; exit 1; }
	-@if [ -d /run/systemd/system ]; then \
	  systemctl disable --now dropline.service dropline-prune.timer 2>/dev/null; fi
	for u in $(UNITS); do rm -f $(UNITDIR)/$$u; done
	rm -f $(SYSUSERSDIR)/dropline.conf $(TMPFILESDIR)/dropline.conf
	rm -rf $(PREFIX)
	@# The link on PATH, if it is still ours.
	if [ "$$(readlink $(BINDIR)/dropline)" = "$(PREFIX)/bin/dropline" ]; then rm -f $(BINDIR)/dropline; fi
	rm -f $(MANDIR)/man1/dropline.1 $(BASHCOMPDIR)/dropline $(ZSHCOMPDIR)/_dropline
	@if [ "$(PURGE)" = 1 ]; then \
	  rm -rf /opt/automation/data /var/lib/dropline $(CONFDIR) $(PIPELINESDIR); \
	  echo "removed data, state, configuration and pipelines"; \
	else echo "kept /opt/automation/data, /var/lib/dropline, $(CONFDIR) and $(PIPELINESDIR) (PURGE=1 removes them)"; fi
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
