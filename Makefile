# fluxcgi — one hand-written Makefile.  `make help` lists the targets.
# Quiet by default; `make V=1` shows the commands.

PYTHON  ?= /usr/bin/python3
BUILD   ?= build
SEED    ?= 0

ifeq ($(V),1)
Q :=
else
Q := @
endif

export PYTHONPATH := $(CURDIR)/export$(if $(PYTHONPATH),:$(PYTHONPATH))
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all help deps tiny-model test test-export clean

all: deps tiny-model

help:
	@echo "make deps        install missing Debian packages (apt-get, as root or via sudo)"
	@echo "make tiny-model  write tiny random checkpoints (BFL + diffusers layouts) and export"
	@echo "                 them to $(BUILD)/models/tiny"
	@echo "make test        install, build and run every test"
	@echo "make clean       remove $(BUILD)/"

deps:
	$(Q)tools/deps.sh

# ---------------------------------------------------------------------------
# export/: FLUX modules, checkpoint readers, tiny checkpoints, the exporter.

EXPORT_PY := $(wildcard export/fluxexport/*.py) export/data/tiny_corpus.txt
TINY_SRC  := $(BUILD)/tiny-src
TINY_DIR  := $(BUILD)/models/tiny

tiny-model: $(TINY_DIR)/manifest.json

$(TINY_SRC)/.stamp: $(EXPORT_PY) | deps
	@echo "  TINY    $(TINY_SRC) (seed $(SEED))"
	$(Q)$(PYTHON) -m fluxexport tiny --out $(TINY_SRC) --seed $(SEED) --force
	$(Q)touch $@

$(TINY_DIR)/manifest.json: $(TINY_SRC)/.stamp
	@echo "  EXPORT  $(TINY_DIR)"
	$(Q)$(PYTHON) -m fluxexport export --source $(TINY_SRC)/bfl --layout bfl \
		--name flux-tiny -o $(TINY_DIR) --force --quiet

test-export: deps tiny-model
	@echo "  TEST    export"
	$(Q)$(PYTHON) -m unittest discover -s tests/export -t . $(if $(V),-v,)

# ---------------------------------------------------------------------------

test: test-export

clean:
	rm -rf $(BUILD)
