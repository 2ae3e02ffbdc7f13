# gnld: every target runs inside the Debian sid build root (tools/sidroot)
# unless this host already has TensorFlow Lite's C API and OpenCV 4.10, or
# we are already inside the root. A person types `make test`, never chroot.
#
#   make setup    build the root (cached in ~/.cache/gnld) and the binaries
#   make run      demo: default bundle, MTD sample images, local broker
#   make test     all tests, Go and Python, and a short run of every fuzz target
#   make fuzz     the long fuzz run: FUZZTIME per target (default 10m)
#   make bench    per-stage latency, RSS, Go vs Python pipeline
#   make soak     gnld for SOAK_MINUTES (10) under injected faults; nothing lost?
#   make fleet    20 gnld, 2 site brokers bridged to a centre, FLEET_MINUTES (10) of cuts and restarts
#   make model    retrain the default bundle in models/default from MTD
#   make deb      the Debian package, out/gnld_<version>_<arch>.deb
#   make deb-model  a model bundle as its own package (BUNDLE=models/default)

SHELL := /bin/bash
MTD ?= $(abspath ../shared/data/mtd)
export MTD

# Native when the C libraries are here already, or when inside the root.
NATIVE := $(shell if [ -n "$$SIDROOT_INSIDE" ]; then echo 1; \
  elif pkg-config --exists opencv4 2>/dev/null && [ "$$(pkg-config --modversion opencv4 | cut -d. -f1,2)" = "4.10" ] \
       && { ldconfig -p 2>/dev/null | grep -q libtensorflowlite_c.so; }; then echo 1; fi)

TARGETS := build run test test-go test-py test-fuzz fuzz bench soak fleet eval model deb-model lint clean-bin

ifeq ($(NATIVE),)
# ---- host side: forward to the root -------------------------------------
.PHONY: setup $(TARGETS)
setup:
	tools/sidroot ensure
	tools/sidroot run $(MAKE) --no-print-directory build
$(TARGETS):
	tools/sidroot run $(MAKE) --no-print-directory $@
# The package version comes from git, which a worktree cannot reach from
# inside the root.
.PHONY: deb
deb:
	tools/sidroot run $(MAKE) --no-print-directory deb \
	  VERSION=$(or $(VERSION),$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d%H%M%S 2>/dev/null | sed 's/^/0~/'))
else
# ---- native side ---------------------------------------------------------
GO ?= go
PY ?= python3
export PYTHONPATH := $(CURDIR)/models
BIN := bin

.PHONY: setup $(TARGETS)
setup: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

run: build
	tools/demo

test: test-go test-py test-fuzz

test-go:
	$(GO) vet ./...
	$(GO) test -count=1 ./...

# Every Go fuzz target for FUZZTIME (1000 calls each here, seed corpora
# included; they ran in test-go already). A count, not a duration: see
# tools/fuzz. tools/fuzz says where a crasher goes.
test-fuzz:
	FUZZTIME=$(or $(FUZZTIME),1000x) tools/fuzz

# The long run, e.g. make fuzz FUZZTIME=3m.
fuzz:
	FUZZTIME=$(or $(FUZZTIME),10m) tools/fuzz

test-py:
	cd models && $(PY) -m pytest -q

bench: build
	tools/bench

# A soak with faults injected (tools/soak, docs/SOAK.md): SOAK_MINUTES
# (default 10), SOAK_SEED (default 1); report in out/soak/report.json.
# Exits 1 when a target is missed. Not part of make test.
soak: build
	$(GO) run ./tools/soak

# A fleet on one machine (docs/FLEET.md): 20 gnld processes, two site
# brokers bridged to a central one, FLEET_MINUTES (default 10) with the
# link cut and the brokers restarted; every result must reach the centre.
# Not part of make test (TestFleet skips without GNLD_FLEET_MINUTES). The
# run takes FLEET_MINUTES plus about 2; go test's limit is 30 minutes.
fleet:
	GNLD_FLEET_MINUTES=$(or $(FLEET_MINUTES),10) $(GO) test -count=1 -run '^TestFleet$$' -v -timeout 30m ./cmd/gnld

eval: build ; tools/evaluate $(EVAL_ARGS)

# Train into out/model (checkpoint and all), then copy the bundle and its
# records into models/default, the bundle that `make run` and the tests use,
# and record its training images' statistics for the drift monitor.
# --epochs 45: the default bundle's stage 1 ran 45 epochs (the plateau rule
# had not stopped it yet; the bundle before it stopped at 41), which holds
# make model to about 40 minutes on 2 cores. Everything else is gnl fit's
# defaults (drift policy product).
model:
	$(PY) -m gnl fit --data $(MTD) --out out/model --epochs 45
	cp out/model/model.tflite out/model/model.json out/model/train.json out/model/calibration.json models/default/
	$(PY) -m gnl drift-stats --data $(MTD) --bundle models/default

# Binaries, unit, default bundle, /etc/gnld/gnld.env and the gnld user;
# Depends computed by dpkg-shlibdeps (tools/mkdeb).
.PHONY: deb
deb: build
	VERSION="$(VERSION)" tools/mkdeb out

# A bundle as its own package, gnld-model-<name>_<version>_all.deb in out/
# (tools/mkdeb-model; docs/FLEET.md, "Models through apt").
deb-model:
	tools/mkdeb-model $(or $(BUNDLE),models/default) out

lint:
	@out="$$(gofmt -l cmd capture runtime pipeline publish models internal calibration packaging web drift tools sparkplug evidence teach monitoring)"; \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean-bin:
	rm -rf $(BIN)
endif
