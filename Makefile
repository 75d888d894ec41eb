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

all: deps tiny-model c

help:
	@echo "make deps        install missing Debian packages (apt-get, as root or via sudo)"
	@echo "make tiny-model  write tiny random checkpoints (BFL + diffusers layouts) and export"
	@echo "                 them to $(BUILD)/models/tiny"
	@echo "make c           build the C core ($(BUILD)/libfluxcore.a) and $(BUILD)/fluxgen"
	@echo "make test        install, build and run every test"
	@echo "make test-c      C unit tests, tokenizer cross-checks, sanitizer run (part of test)"
	@echo "make bench       tokenizer speed: C next to the Python implementations"
	@echo "make format-check  clang-format --dry-run -Werror on the C sources"
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
# C: core/ (static library), cli/ (fluxgen), tests/unit/ (one binary per module).
# Objects live under $(BUILD)/obj; the ASan+UBSan build of the same sources under
# $(BUILD)/san.  C++ is allowed only in core/tok_t5.cc (the SentencePiece wrapper).

CC      := gcc
CXX     := g++
OPT     ?= -O2 -g
CWARN   := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wvla -Wwrite-strings
CXXWARN := -Wall -Wextra -Werror
# Recursive (=): pkg-config runs when a recipe needs it, after `deps` has installed it.
C_DEPS_CFLAGS = $(shell pkg-config --cflags json-c libutf8proc)
C_DEPS_LIBS   = $(shell pkg-config --libs json-c libutf8proc) -lsentencepiece -pthread
C_CPPFLAGS    = -D_GNU_SOURCE -MMD -MP $(C_DEPS_CFLAGS)
CFLAGS_FX     = -std=c17 $(OPT) $(CWARN)
CXXFLAGS_FX   = -std=c++17 $(OPT) $(CXXWARN)
SAN_FLAGS     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

CORE_C    := core/err.c core/text.c core/tok_clip.c
CORE_CXX  := core/tok_t5.cc
CORE_OBJ  := $(CORE_C:%.c=$(BUILD)/obj/%.o) $(CORE_CXX:%.cc=$(BUILD)/obj/%.o)
SAN_OBJ   := $(CORE_C:%.c=$(BUILD)/san/%.o) $(CORE_CXX:%.cc=$(BUILD)/san/%.o)
CORE_LIB  := $(BUILD)/libfluxcore.a
SAN_LIB   := $(BUILD)/san/libfluxcore.a
FLUXGEN   := $(BUILD)/fluxgen
SAN_FLUXGEN := $(BUILD)/san/fluxgen
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/unit/%)
SAN_UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/san/unit/%)
BENCH_BIN := $(BUILD)/bench/bench_tok
C_SRC_ALL := $(wildcard core/*.c core/*.h core/*.cc cli/*.c tests/unit/*.c tests/unit/*.h \
               tests/bench/*.c)

# Tokenizer data for the tests: the tiny files always, the real ones when present.
TOK_TINY  := $(BUILD)/tok-tiny
REAL_CLIP := $(wildcard ../shared/data/clip/vocab.json)
REAL_T5   := $(wildcard ../shared/data/t5/spiece.model)
BENCH_CLIP := $(if $(REAL_CLIP),../shared/data/clip,$(TOK_TINY)/tokenizer)
BENCH_T5   := $(if $(REAL_T5),../shared/data/t5/spiece.model,$(TOK_TINY)/tokenizer_2/spiece.model)

.PHONY: c test-c test-unit test-tok test-san bench format-check

c: $(CORE_LIB) $(FLUXGEN)

$(BUILD)/obj/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC      $<"
	$(Q)$(CC) $(C_CPPFLAGS) $(CFLAGS_FX) -c $< -o $@

$(BUILD)/obj/%.o: %.cc | deps
	@mkdir -p $(@D)
	@echo "  CXX     $<"
	$(Q)$(CXX) $(C_CPPFLAGS) $(CXXFLAGS_FX) -c $< -o $@

$(BUILD)/san/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC san  $<"
	$(Q)$(CC) $(C_CPPFLAGS) $(CFLAGS_FX) $(SAN_FLAGS) -c $< -o $@

$(BUILD)/san/%.o: %.cc | deps
	@mkdir -p $(@D)
	@echo "  CXX san $<"
	$(Q)$(CXX) $(C_CPPFLAGS) $(CXXFLAGS_FX) $(SAN_FLAGS) -c $< -o $@

$(CORE_LIB): $(CORE_OBJ)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(SAN_LIB): $(SAN_OBJ)
	@echo "  AR san  $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(FLUXGEN): $(BUILD)/obj/cli/fluxgen.o $(CORE_LIB)
	@echo "  LINK    $@"
	$(Q)$(CXX) -o $@ $^ $(C_DEPS_LIBS)

$(SAN_FLUXGEN): $(BUILD)/san/cli/fluxgen.o $(SAN_LIB)
	@echo "  LINK san $@"
	$(Q)$(CXX) $(SAN_FLAGS) -o $@ $^ $(C_DEPS_LIBS)

$(BUILD)/unit/%: $(BUILD)/obj/tests/unit/%.o $(CORE_LIB)
	@mkdir -p $(@D)
	@echo "  LINK    $@"
	$(Q)$(CXX) -o $@ $^ $(C_DEPS_LIBS)

$(BUILD)/san/unit/%: $(BUILD)/san/tests/unit/%.o $(SAN_LIB)
	@mkdir -p $(@D)
	@echo "  LINK san $@"
	$(Q)$(CXX) $(SAN_FLAGS) -o $@ $^ $(C_DEPS_LIBS)

$(BENCH_BIN): $(BUILD)/obj/tests/bench/bench_tok.o $(CORE_LIB)
	@mkdir -p $(@D)
	@echo "  LINK    $@"
	$(Q)$(CXX) -o $@ $^ $(C_DEPS_LIBS)

$(TOK_TINY)/.stamp: $(EXPORT_PY) | deps
	@echo "  TINY    $(TOK_TINY) (tokenizer files)"
	$(Q)$(PYTHON) -m fluxexport tiny-tokenizers --out $(TOK_TINY) --force
	$(Q)touch $@

# Unit tests get the tokenizer files as arguments: CLIP folders, then T5 models.
UNIT_ARGS = --clip $(TOK_TINY)/tokenizer $(if $(REAL_CLIP),--clip ../shared/data/clip) \
            --t5 $(TOK_TINY)/tokenizer_2/spiece.model $(if $(REAL_T5),--t5 $(REAL_T5))

test-unit: $(UNIT_BIN) $(TOK_TINY)/.stamp
	$(Q)set -e; for t in $(UNIT_BIN); do echo "  UNIT    $$t"; $$t $(UNIT_ARGS); done

test-tok: $(FLUXGEN) $(TOK_TINY)/.stamp
	@echo "  TEST    CLIP tokenizer vs tests/tok/clip_ref.py"
	$(Q)$(PYTHON) tests/tok/check_clip.py --fluxgen $(FLUXGEN) --tiny $(TOK_TINY)/tokenizer \
		$(if $(REAL_CLIP),--real ../shared/data/clip)
	@echo "  TEST    T5 tokenizer vs python3-sentencepiece"
	$(Q)$(PYTHON) tests/tok/check_t5.py --fluxgen $(FLUXGEN) --work $(BUILD)/tok-t5 \
		--tiny $(TOK_TINY)/tokenizer_2/spiece.model $(if $(REAL_T5),--real $(REAL_T5))
	@echo "  TEST    bad input through fluxgen"
	$(Q)$(PYTHON) tests/tok/check_bad.py --fluxgen $(FLUXGEN) --model $(TOK_TINY) \
		$(if $(and $(REAL_CLIP),$(REAL_T5)),--clip ../shared/data/clip --t5 $(REAL_T5))

# ASan + UBSan: the unit tests and the bad-input run, leaks included (LeakSanitizer).
test-san: $(SAN_UNIT_BIN) $(SAN_FLUXGEN) $(TOK_TINY)/.stamp
	$(Q)set -e; for t in $(SAN_UNIT_BIN); do echo "  UNIT san $$t"; \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$$t $(UNIT_ARGS); done
	@echo "  TEST san bad input through $(SAN_FLUXGEN)"
	$(Q)ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(PYTHON) tests/tok/check_bad.py --fluxgen $(SAN_FLUXGEN) --model $(TOK_TINY) \
		$(if $(and $(REAL_CLIP),$(REAL_T5)),--clip ../shared/data/clip --t5 $(REAL_T5))

test-c: test-unit test-tok test-san

bench: $(BENCH_BIN) $(TOK_TINY)/.stamp
	$(Q)$(PYTHON) tests/bench/bench_tok.py --c-bench $(BENCH_BIN) \
		--clip $(BENCH_CLIP) --t5 $(BENCH_T5) --corpus tests/bench/prompts.txt

format-check:
	@echo "  FORMAT  $(words $(C_SRC_ALL)) files"
	$(Q)clang-format --dry-run -Werror $(C_SRC_ALL)

.SECONDARY:

-include $(shell find $(BUILD)/obj $(BUILD)/san -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------------------

test: test-c test-export

clean:
	rm -rf $(BUILD)
