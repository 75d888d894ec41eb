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

# One line per public target (tests/deploy/test_make.py checks that every .PHONY target is here).
help:
	@echo "make [all]           deps, tiny-model and c: what a first checkout needs"
	@echo "make deps            install missing Debian packages (apt-get; NO_DEPS=1 skips it)"
	@echo "make tiny-model      tiny random checkpoints exported to $(BUILD)/models/tiny"
	@echo "make c               the C core ($(BUILD)/libfluxcore.a), $(BUILD)/fluxgen and plugins"
	@echo "make service         $(BUILD)/fluxcgi, the FastCGI service"
	@echo "make run             serve the tiny model (or MODEL=DIR) via nginx on :$(RUN_PORT) (RUN_PORT=)"
	@echo "make install         install under PREFIX=$(PREFIX) (DESTDIR= for staging)"
	@echo "make uninstall       remove what install wrote (an edited fluxcgi.conf is kept)"
	@echo "make test            every test below (slow: several minutes)"
	@echo "make test-c          test-unit, test-tok and test-san"
	@echo "make test-unit       the C unit tests (tests/unit)"
	@echo "make test-tok        the C tokenizers against the Python ones, and bad input"
	@echo "make test-san        the unit tests and fluxgen under ASan + UBSan"
	@echo "make test-export     the exporter (tests/export)"
	@echo "make test-pipeline   fluxgen against the Python reference pipeline, and its errors"
	@echo "make test-service    fluxcgi behind real nginx and lighttpd (tests/service)"
	@echo "make test-deploy     make install, the installed programs, tools/run.sh, systemd unit"
	@echo "make test-fuzz       every libFuzzer target over its corpus, then 10 s each (part of test)"
	@echo "make format-check    clang-format --dry-run -Werror on the C sources"
	@echo "make fuzz            each libFuzzer target for FUZZ_SECONDS (60; tests/fuzz)"
	@echo "make fuzz-build      build the libFuzzer targets (clang) under $(BUILD)/fuzz"
	@echo "make chaos           kill -9 at every phase over CHAOS_JOBS (40) jobs: none lost"
	@echo "make load            LOAD_CONNS (1000) connections for LOAD_SECONDS (60): 0 errors"
	@echo "make check-cuda-compile  the shim's CUDA side compiled here (nvidia-cuda-dev headers)"
	@echo "make bench           bench-tok, bench-pipeline and bench-service (not tests)"
	@echo "make bench-tok       tokenizer prompts/s: C next to the Python implementations"
	@echo "make bench-pipeline  fluxgen per phase next to the Python reference pipeline"
	@echo "make bench-formats   accuracy of the weight formats (int8, int4, fp8) against fp32"
	@echo "make bench-lora      LoRA patch/restore time (rank 32, full-width blocks) and requant error"
	@echo "make vram-table      GPU memory per weight format and placement, full model (plan)"
	@echo "make bench-service   wrk: nginx alone, fluxcgi+nginx and the seed's FastAPI app"
	@echo "make vendor-docs     fetch Swagger UI (SWAGGER_UI_VERSION) from npm into conf/docs/"
	@echo "make clean           remove $(BUILD)/"
	@echo "make help            this list"

# NO_DEPS=1 skips the package check (hosts without apt, e.g. a GPU box with its own toolchain).
deps:
	$(Q)$(if $(NO_DEPS),true,tools/deps.sh)

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
# C: core/ + shim/ (static library), cli/ (fluxgen), tests/unit/ (one binary per module).
# Objects live under $(BUILD)/obj; the ASan+UBSan build of the same sources under
# $(BUILD)/san.  C++ is allowed only in shim/ and core/tok_t5.cc (the SentencePiece wrapper).

CC      := gcc
CXX     := g++
OPT     ?= -O2 -g
CWARN   := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wvla -Wwrite-strings
CXXWARN := -Wall -Wextra -Werror
# Recursive (=): pkg-config runs when a recipe needs it, after `deps` has installed it.
C_DEPS_CFLAGS = $(shell pkg-config --cflags json-c libutf8proc libcrypto)
C_DEPS_LIBS   = $(shell pkg-config --libs json-c libutf8proc libpng libturbojpeg libwebpmux libwebp \
                libcrypto) \
                -lm -ldl -pthread
PLUGIN_T5_LIBS = $(shell pkg-config --libs libutf8proc) -lsentencepiece
C_CPPFLAGS    = -D_GNU_SOURCE -MMD -MP $(C_DEPS_CFLAGS)
CFLAGS_FX     = -std=c17 $(OPT) $(CWARN)
CXXFLAGS_FX   = -std=c++17 $(OPT) $(CXXWARN)
SAN_FLAGS     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

# libtorch: Debian's libtorch-dev by default.  On a host with a pip PyTorch:
#   make TORCH_DIR=$$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
# (TORCH_ABI: that torch's torch._C._GLIBCXX_USE_CXX11_ABI as 0/1; libtorch_cuda is linked
# with --no-as-needed when present, so CUDA devices are seen).  Only shim/ sees these flags.
# With libtorch_cuda, the c10 CUDA headers the shim includes need the CUDA runtime's headers:
# from CUDA_HOME (default /usr/local/cuda) when it has them, else from the pip wheels beside
# torch (site-packages/nvidia/*/include).  The shim calls no CUDA runtime function itself
# (check-cuda-compile checks that), so only the -L directories are added, no -lcudart.
TORCH_DIR ?=
TORCH_ABI ?= 1
CUDA_HOME ?= /usr/local/cuda
ifeq ($(TORCH_DIR),)
TORCH_CFLAGS := -isystem /usr/include/torch/csrc/api/include
TORCH_LIBS   := -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 -Wl,--as-needed
else
TORCH_CUDA   := $(wildcard $(TORCH_DIR)/lib/libtorch_cuda.so)
TORCH_NVIDIA := $(patsubst %/include/,%,$(dir $(wildcard $(TORCH_DIR)/../nvidia/*/include/*.h)))
CUDA_DIRS    := $(if $(TORCH_CUDA),$(if $(wildcard $(CUDA_HOME)/include/cuda_runtime_api.h),\
                  $(CUDA_HOME),$(sort $(TORCH_NVIDIA))))
CUDA_LIBDIRS := $(wildcard $(addsuffix /lib64,$(CUDA_DIRS)) $(addsuffix /lib,$(CUDA_DIRS)))
TORCH_CFLAGS := -isystem $(TORCH_DIR)/include -isystem $(TORCH_DIR)/include/torch/csrc/api/include \
                $(addprefix -isystem ,$(addsuffix /include,$(CUDA_DIRS))) \
                -D_GLIBCXX_USE_CXX11_ABI=$(TORCH_ABI) $(if $(TORCH_CUDA),-DSHIM_WITH_CUDA)
TORCH_LIBS   := -L$(TORCH_DIR)/lib -Wl,-rpath,$(TORCH_DIR)/lib $(addprefix -L,$(CUDA_LIBDIRS)) \
                -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 \
                $(if $(TORCH_CUDA),-ltorch_cuda -lc10_cuda) -Wl,--as-needed
endif
# The shim's C++ standard: the newest that the compiler and these torch headers accept
# (libtorch 2.12+ needs C++20), probed once per torch into $(TORCH_STD) and read at build time.
TORCH_STD := $(BUILD)/cxxstd/torch$(subst /,_,$(TORCH_DIR))

CORE_C    := core/err.c core/text.c core/tok_clip.c core/sched.c core/sha256.c core/npy.c \
             core/pngw.c core/imgw.c core/manifest.c core/pipeline.c core/plugin.c core/tok_t5_dl.c \
             core/plan.c shim/shim_dl.c
# LoRA files: the safetensors reader and the checks against a model dir's lora_map.json
CORE_C    += core/safetensors.c core/lora.c
CORE_OBJ  := $(CORE_C:%.c=$(BUILD)/obj/%.o)
SAN_OBJ   := $(CORE_C:%.c=$(BUILD)/san/%.o)
CORE_LIB  := $(BUILD)/libfluxcore.a
SAN_LIB   := $(BUILD)/san/libfluxcore.a
# The C++ sides, each a shared object that programs open with RTLD_LOCAL (core/plugin.h says
# why): libfluxt5.so over sentencepiece, libfluxshim.so over libtorch.
T5_PIC      = $(addprefix $(1)/pic/core/,tok_t5.o text.o err.o)
PLUGINS     := $(BUILD)/lib/libfluxt5.so $(BUILD)/lib/libfluxshim.so
SAN_PLUGINS := $(BUILD)/san/lib/libfluxt5.so $(BUILD)/san/lib/libfluxshim.so
FLUXGEN   := $(BUILD)/fluxgen
SAN_FLUXGEN := $(BUILD)/san/fluxgen
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/unit/%)
SAN_UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/san/unit/%)
BENCH_BIN := $(BUILD)/bench/bench_tok
C_SRC_ALL := $(wildcard core/*.c core/*.h core/*.cc shim/*.h shim/*.c shim/*.cc cli/*.c cli/*.h \
               tests/unit/*.c tests/unit/*.h tests/bench/*.c tests/pipeline/*.c)
# One pipeline, several LoRA sets in one process (tests/pipeline/test_lora.py, bench-lora).
LORA_RUN  := $(BUILD)/lora_run

# Tokenizer data for the tests: the tiny files (written by the exporter) and the real
# vocabularies kept in tests/data/ (see tests/data/README.md).
TOK_TINY  := $(BUILD)/tok-tiny
REAL_CLIP := tests/data/clip
REAL_T5   := tests/data/t5/spiece.model
BENCH_CLIP := $(REAL_CLIP)
BENCH_T5   := $(REAL_T5)

.PHONY: c test-c test-unit test-tok test-san test-pipeline bench bench-tok bench-pipeline \
	bench-formats bench-lora vram-table format-check

c: $(CORE_LIB) $(FLUXGEN) $(PLUGINS)

$(BUILD)/pic/shim/shim.o $(BUILD)/san/pic/shim/shim.o: C_CPPFLAGS += $(TORCH_CFLAGS)
$(BUILD)/pic/shim/shim.o $(BUILD)/san/pic/shim/shim.o: CXXFLAGS_FX = -std=$(file <$(TORCH_STD)) \
	$(OPT) $(CXXWARN)
$(BUILD)/pic/shim/shim.o $(BUILD)/san/pic/shim/shim.o: $(TORCH_STD)

$(TORCH_STD): | deps
	@mkdir -p $(@D)
	$(Q)for s in c++20 c++17; do \
		if echo '#include <torch/script.h>' | $(CXX) -std=$$s $(TORCH_CFLAGS) -fsyntax-only \
			-x c++ - 2>/dev/null; then echo $$s > $@; echo "  CXXSTD  $$s (torch headers)"; \
			exit 0; fi; done; \
		echo "neither c++20 nor c++17 compiles <torch/script.h> with $(CXX)" >&2; exit 1
# shim.h is C: the unit test that includes it is compiled -pedantic as well.
$(BUILD)/obj/tests/unit/test_shim.o $(BUILD)/san/tests/unit/test_shim.o: CFLAGS_FX += -pedantic

$(BUILD)/obj/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC      $<"
	$(Q)$(CC) $(C_CPPFLAGS) $(CFLAGS_FX) -c $< -o $@

$(BUILD)/san/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC san  $<"
	$(Q)$(CC) $(C_CPPFLAGS) $(CFLAGS_FX) $(SAN_FLAGS) -c $< -o $@

$(BUILD)/pic/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC pic  $<"
	$(Q)$(CC) $(C_CPPFLAGS) $(CFLAGS_FX) -fPIC -c $< -o $@

$(BUILD)/pic/%.o: %.cc | deps
	@mkdir -p $(@D)
	@echo "  CXX pic $<"
	$(Q)$(CXX) $(C_CPPFLAGS) $(CXXFLAGS_FX) -fPIC -c $< -o $@

$(BUILD)/san/pic/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC san  $< (pic)"
	$(Q)$(CC) $(C_CPPFLAGS) $(CFLAGS_FX) $(SAN_FLAGS) -fPIC -c $< -o $@

$(BUILD)/san/pic/%.o: %.cc | deps
	@mkdir -p $(@D)
	@echo "  CXX san $< (pic)"
	$(Q)$(CXX) $(C_CPPFLAGS) $(CXXFLAGS_FX) $(SAN_FLAGS) -fPIC -c $< -o $@

$(CORE_LIB): $(CORE_OBJ)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(SAN_LIB): $(SAN_OBJ)
	@echo "  AR san  $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/lib/libfluxt5.so: $(call T5_PIC,$(BUILD))
	@mkdir -p $(@D)
	@echo "  SO      $@"
	$(Q)$(CXX) -shared -Wl,-Bsymbolic -Wl,--no-undefined -o $@ $^ $(PLUGIN_T5_LIBS)

$(BUILD)/san/lib/libfluxt5.so: $(call T5_PIC,$(BUILD)/san)
	@mkdir -p $(@D)
	@echo "  SO san  $@"
	$(Q)$(CXX) $(SAN_FLAGS) -shared -Wl,-Bsymbolic -Wl,--no-undefined -o $@ $^ $(PLUGIN_T5_LIBS)

$(BUILD)/lib/libfluxshim.so: $(BUILD)/pic/shim/shim.o
	@mkdir -p $(@D)
	@echo "  SO      $@"
	$(Q)$(CXX) -shared -Wl,-Bsymbolic -Wl,--no-undefined -o $@ $^ $(TORCH_LIBS)

$(BUILD)/san/lib/libfluxshim.so: $(BUILD)/san/pic/shim/shim.o
	@mkdir -p $(@D)
	@echo "  SO san  $@"
	$(Q)$(CXX) $(SAN_FLAGS) -shared -Wl,-Bsymbolic -Wl,--no-undefined -o $@ $^ $(TORCH_LIBS)

$(FLUXGEN): $(BUILD)/obj/cli/fluxgen.o $(BUILD)/obj/cli/generate.o $(BUILD)/obj/cli/plan.o \
            $(CORE_LIB) | $(PLUGINS)
	@echo "  LINK    $@"
	$(Q)$(CC) -o $@ $^ $(C_DEPS_LIBS)

$(SAN_FLUXGEN): $(BUILD)/san/cli/fluxgen.o $(BUILD)/san/cli/generate.o $(BUILD)/san/cli/plan.o \
                $(SAN_LIB) | $(SAN_PLUGINS)
	@echo "  LINK san $@"
	$(Q)$(CC) $(SAN_FLAGS) -o $@ $^ $(C_DEPS_LIBS)

$(BUILD)/unit/%: $(BUILD)/obj/tests/unit/%.o $(CORE_LIB) | $(PLUGINS)
	@mkdir -p $(@D)
	@echo "  LINK    $@"
	$(Q)$(CC) -o $@ $^ $(C_DEPS_LIBS)

$(BUILD)/san/unit/%: $(BUILD)/san/tests/unit/%.o $(SAN_LIB) | $(SAN_PLUGINS)
	@mkdir -p $(@D)
	@echo "  LINK san $@"
	$(Q)$(CC) $(SAN_FLAGS) -o $@ $^ $(C_DEPS_LIBS)

$(LORA_RUN): $(BUILD)/obj/tests/pipeline/lora_run.o $(CORE_LIB) | $(PLUGINS)
	@echo "  LINK    $@"
	$(Q)$(CC) -o $@ $^ $(C_DEPS_LIBS)

$(BENCH_BIN): $(BUILD)/obj/tests/bench/bench_tok.o $(CORE_LIB) | $(PLUGINS)
	@mkdir -p $(@D)
	@echo "  LINK    $@"
	$(Q)$(CC) -o $@ $^ $(C_DEPS_LIBS)

$(TOK_TINY)/.stamp: $(EXPORT_PY) | deps
	@echo "  TINY    $(TOK_TINY) (tokenizer files)"
	$(Q)$(PYTHON) -m fluxexport tiny-tokenizers --out $(TOK_TINY) --force
	$(Q)touch $@

# Unit tests get the tokenizer files as arguments: CLIP folders, then T5 models.
UNIT_ARGS = --clip $(TOK_TINY)/tokenizer --clip $(REAL_CLIP) \
            --t5 $(TOK_TINY)/tokenizer_2/spiece.model --t5 $(REAL_T5) \
            --model $(TINY_DIR)

test-unit: $(UNIT_BIN) $(TOK_TINY)/.stamp tiny-model
	$(Q)set -e; for t in $(UNIT_BIN); do echo "  UNIT    $$t"; $$t $(UNIT_ARGS); done

test-tok: $(FLUXGEN) $(TOK_TINY)/.stamp
	@echo "  TEST    CLIP tokenizer vs tests/tok/clip_ref.py"
	$(Q)$(PYTHON) tests/tok/check_clip.py --fluxgen $(FLUXGEN) --tiny $(TOK_TINY)/tokenizer \
		--real $(REAL_CLIP)
	@echo "  TEST    T5 tokenizer vs python3-sentencepiece"
	$(Q)$(PYTHON) tests/tok/check_t5.py --fluxgen $(FLUXGEN) --work $(BUILD)/tok-t5 \
		--tiny $(TOK_TINY)/tokenizer_2/spiece.model --real $(REAL_T5)
	@echo "  TEST    bad input through fluxgen"
	$(Q)$(PYTHON) tests/tok/check_bad.py --fluxgen $(FLUXGEN) --model $(TOK_TINY) \
		--clip $(REAL_CLIP) --t5 $(REAL_T5)

# ASan + UBSan: the unit tests and the bad-input run, leaks included (LeakSanitizer).
test-san: $(SAN_UNIT_BIN) $(SAN_FLUXGEN) $(TOK_TINY)/.stamp tiny-model
	$(Q)set -e; for t in $(SAN_UNIT_BIN); do echo "  UNIT san $$t"; \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$$t $(UNIT_ARGS); done
	@echo "  TEST san bad input through $(SAN_FLUXGEN)"
	$(Q)ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(PYTHON) tests/tok/check_bad.py --fluxgen $(SAN_FLUXGEN) --model $(TOK_TINY) \
		--clip $(REAL_CLIP) --t5 $(REAL_T5)
	@echo "  TEST san generation and its error exits through $(SAN_FLUXGEN)"
	@# intercept_tls_get_addr=0: LeakSanitizer's own tracer crashes ("Tracer caught signal 11",
	@# a garbage DTLS range) once glibc has resized the DTV of the plugins' TLS; leaks are
	@# still checked, and ASan + UBSan are unchanged
	$(Q)ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:intercept_tls_get_addr=0 \
		UBSAN_OPTIONS=print_stacktrace=1 \
		FLUXGEN=$(SAN_FLUXGEN) FLUX_MODEL=$(TINY_DIR) $(PYTHON) -m unittest \
		tests.pipeline.test_pipeline.Output tests.pipeline.test_pipeline.Errors

test-c: test-unit test-tok test-san

# The C pipeline against the Python reference on the tiny model (issue: parity, noise,
# determinism, PNG, error exits).
# test_formats also exports the tiny checkpoint with --weights and runs fluxcgi --check.
test-pipeline: $(FLUXGEN) $(BUILD)/fluxcgi $(LORA_RUN) tiny-model
	@echo "  TEST    pipeline (fluxgen vs the Python reference)"
	$(Q)FLUXGEN=$(FLUXGEN) FLUXCGI=$(FLUXCGI) TINY_SRC=$(TINY_SRC) FLUX_MODEL=$(TINY_DIR) \
		LORA_RUN=$(LORA_RUN) \
		$(PYTHON) -m unittest discover \
		-s tests/pipeline -t . $(if $(V),-v,)

bench: bench-tok bench-pipeline

bench-tok: $(BENCH_BIN) $(TOK_TINY)/.stamp
	$(Q)$(PYTHON) tests/bench/bench_tok.py --c-bench $(BENCH_BIN) \
		--clip $(BENCH_CLIP) --t5 $(BENCH_T5) --corpus tests/bench/prompts.txt

bench-pipeline: $(FLUXGEN) tiny-model
	$(Q)$(PYTHON) tests/bench/bench_pipeline.py --fluxgen $(FLUXGEN) --model $(TINY_DIR)

# Not a test: LoRA patch and restore times of a rank-32 LoRA on full-width blocks (as many
# as fit in memory, extrapolated to the full model), and the requantised formats' error
# against an exact merge.  LORA_BLOCKS=D,S overrides the block counts (2,2).
LORA_BLOCKS ?=
bench-lora: $(LORA_RUN) tiny-model
	$(Q)nice $(PYTHON) tests/bench/bench_lora.py --lora-run $(LORA_RUN) --tiny $(TINY_DIR) \
		--work $(BUILD)/bench-lora $(if $(LORA_BLOCKS),--blocks $(LORA_BLOCKS),) \
		--json $(BUILD)/bench-lora.json

# The CUDA side of the shim, compiled (not linked) on a machine without CUDA: the torch
# headers in use with -DSHIM_WITH_CUDA, the CUDA runtime headers of Debian's nvidia-cuda-dev
# (non-free; tools/gpu/cuda-headers.sh fetches it with apt-get download, installs nothing)
# and c10's generated cuda_cmake_macros.h.  Then: no CUDA runtime symbol may be referenced
# directly (a pip torch ships libcudart.so.N without the unversioned link name).
CUDA_CHECK := $(BUILD)/cuda-check
.PHONY: check-cuda-compile
check-cuda-compile: $(TORCH_STD)
	$(Q)tools/gpu/cuda-headers.sh $(CUDA_CHECK)
	@echo "  CXX     shim/shim.cc -DSHIM_WITH_CUDA ($(file <$(TORCH_STD)), CUDA headers of $(CUDA_CHECK))"
	$(Q)$(CXX) -std=$(file <$(TORCH_STD)) $(OPT) $(CXXWARN) -fPIC -D_GNU_SOURCE -DSHIM_WITH_CUDA \
		$(TORCH_CFLAGS) -idirafter $(CUDA_CHECK)/c10 -idirafter $(CUDA_CHECK)/cuda/usr/include \
		-c shim/shim.cc -o $(CUDA_CHECK)/shim.o
	$(Q)if nm -u $(CUDA_CHECK)/shim.o | grep -E ' cu(da|blas|dnn)[A-Za-z_]*$$'; then \
		echo "shim.o calls the CUDA runtime directly (above); go through c10/torch" >&2; \
		exit 1; fi
	@echo "  OK      the CUDA side of the shim compiles; no direct CUDA runtime calls"

# The VRAM table of docs/operations.md: manifest-only dirs of the full layout, fluxgen plan.
vram-table: $(FLUXGEN) tiny-model
	$(Q)$(PYTHON) tests/bench/vram_table.py --fluxgen $(FLUXGEN) --tokenizers $(TINY_DIR) \
		--work $(BUILD)/vram

# Not a test: accuracy of the weight formats against fp32 weights (a 3072-wide layer, the tiny
# model and a 512-wide 8 + 16 block random model at 256^2 and 512^2, 8 steps); docs/formats.md
bench-formats: tiny-model
	$(Q)nice $(PYTHON) tests/bench/bench_formats.py --tiny-src $(TINY_SRC) \
		--json $(BUILD)/bench-formats.json

format-check:
	@echo "  FORMAT  $(words $(C_SRC_ALL)) files"
	$(Q)clang-format --dry-run -Werror $(C_SRC_ALL)

.SECONDARY:

-include $(shell find $(BUILD)/obj $(BUILD)/san $(BUILD)/pic -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------------------
# Service: sql/ (the job store), fcgi/ (config, worker, metrics, log, ids, routes, the
# FastCGI program), conf/ (templates), tests/service/ (through real nginx and lighttpd).
# The service's C code is a second static library linked before $(CORE_LIB); like fluxgen,
# fluxcgi is plain C and opens the two C++ plugins at run time.

SVC_C      := sql/store.c fcgi/config.c fcgi/jobid.c fcgi/log.c fcgi/metrics.c fcgi/job.c \
              fcgi/worker.c fcgi/api.c fcgi/reply.c fcgi/parse.c fcgi/routes_generate.c \
              fcgi/routes_queue.c fcgi/routes_ops.c fcgi/routes_events.c fcgi/fcgi_proto.c \
              fcgi/server.c fcgi/routes_openai.c fcgi/routes_a1111.c fcgi/routes_docs.c \
              fcgi/auth.c fcgi/access.c fcgi/keys.c fcgi/webhook.c
SVC_C      += fcgi/lora_dir.c fcgi/routes_loras.c
SVC_GEN    := $(BUILD)/gen/sql/schema_sql.c $(BUILD)/gen/fcgi/openapi_json.c
SVC_OBJ    := $(SVC_C:%.c=$(BUILD)/obj/%.o) $(SVC_GEN:%.c=$(BUILD)/obj/%.o)
SAN_SVC_OBJ := $(SVC_C:%.c=$(BUILD)/san/%.o) $(SVC_GEN:%.c=$(BUILD)/san/%.o)
SVC_LIB    := $(BUILD)/libfluxsvc.a
SAN_SVC_LIB := $(BUILD)/san/libfluxsvc.a
SVC_LIBS    = $(shell pkg-config --libs sqlite3 libcrypto libcurl)
FLUXCGI    := $(BUILD)/fluxcgi
SVC_UNIT   := test_store test_config test_api test_fcgi_proto test_auth
# test_plan also checks the service's use of the plan (api_ctx_limits)
SVC_UNIT   += test_plan
SVC_UNIT_BIN := $(SVC_UNIT:%=$(BUILD)/unit/%)
SAN_SVC_UNIT_BIN := $(SVC_UNIT:%=$(BUILD)/san/unit/%)
C_SRC_ALL  += $(wildcard sql/*.c sql/*.h fcgi/*.c fcgi/*.h)
RUN_DIR    := $(BUILD)/run
RUN_PORT   ?= 8080
# `make run` serves $(RUN_MODEL): the tiny model unless MODEL=DIR is given.
MODEL      ?=
RUN_MODEL  := $(if $(MODEL),$(MODEL),$(TINY_DIR))

.PHONY: service test-service bench-service run

service: $(FLUXCGI)

# sql/schema.sql becomes a C string, so the program carries its own schema.
$(BUILD)/gen/sql/schema_sql.c: sql/schema.sql
	@mkdir -p $(@D)
	@echo "  GEN     $@"
	$(Q)awk 'BEGIN { print "/* generated from sql/schema.sql by the Makefile */"; \
		print "extern const char store_schema_sql[];"; \
		print "const char store_schema_sql[] =" } \
		{ gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); print "    \"" $$0 "\\n\"" } \
		END { print "    ;" }' $< > $@.tmp && mv $@.tmp $@

# fcgi/openapi.json becomes a C string too (GET /openapi.json fills in the live bounds); like
# schema.sql it must hold no backslash, which the awk does not escape.
$(BUILD)/gen/fcgi/openapi_json.c: fcgi/openapi.json
	@mkdir -p $(@D)
	@echo "  GEN     $@"
	$(Q)awk 'BEGIN { print "/* generated from fcgi/openapi.json by the Makefile */"; \
		print "extern const char api_openapi_template[];"; \
		print "const char api_openapi_template[] =" } \
		{ gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); print "    \"" $$0 "\\n\"" } \
		END { print "    ;" }' $< > $@.tmp && mv $@.tmp $@

$(SVC_LIB): $(SVC_OBJ)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(SAN_SVC_LIB): $(SAN_SVC_OBJ)
	@echo "  AR san  $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(FLUXCGI): $(BUILD)/obj/fcgi/main.o $(SVC_LIB) $(CORE_LIB) | $(PLUGINS)
	@echo "  LINK    $@"
	$(Q)$(CC) -o $@ $^ $(SVC_LIBS) $(C_DEPS_LIBS)

# The service's unit tests link the service library too (explicit rules win over the
# pattern rules above); they run in test-unit and test-san with the others.
$(SVC_UNIT_BIN): $(BUILD)/unit/%: $(BUILD)/obj/tests/unit/%.o $(SVC_LIB) $(CORE_LIB) | $(PLUGINS)
	@mkdir -p $(@D)
	@echo "  LINK    $@"
	$(Q)$(CC) -o $@ $^ $(SVC_LIBS) $(C_DEPS_LIBS)

$(SAN_SVC_UNIT_BIN): $(BUILD)/san/unit/%: $(BUILD)/san/tests/unit/%.o $(SAN_SVC_LIB) $(SAN_LIB) \
                     | $(SAN_PLUGINS)
	@mkdir -p $(@D)
	@echo "  LINK san $@"
	$(Q)$(CC) $(SAN_FLAGS) -o $@ $^ $(SVC_LIBS) $(C_DEPS_LIBS)

# The official OpenAI client (npm), which tests/service/test_clients.py points at the live
# stack: pinned, installed under $(BUILD)/npm (node 20: openai 5.x; 6 and later want node 22).
NPM_DIR     := $(BUILD)/npm
OPENAI_NPM  ?= openai@5.23.2
NPM_OPENAI  := $(NPM_DIR)/node_modules/openai/package.json
$(NPM_OPENAI):
	@mkdir -p $(NPM_DIR)
	@echo "  NPM     $(OPENAI_NPM) -> $(NPM_DIR)"
	$(Q)npm install --prefix $(NPM_DIR) --no-audit --no-fund --no-save --silent $(OPENAI_NPM)

# conf/docs/ holds Swagger UI from npm's swagger-ui-dist (conf/docs/README.md): this target
# fetches SWAGGER_UI_VERSION and copies the files the viewer uses (and the licences) again.
SWAGGER_UI_VERSION ?= 5.35.0
.PHONY: vendor-docs
vendor-docs:
	@mkdir -p $(BUILD)/vendor
	$(Q)cd $(BUILD)/vendor && rm -rf package && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) \
		| xargs -n1 tar xzf
	$(Q)cd $(BUILD)/vendor/package && cp swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt \
		swagger-ui.css favicon-32x32.png LICENSE NOTICE $(CURDIR)/conf/docs/

# Integration: fluxcgi behind real nginx and real lighttpd (and spawn-fcgi), on loopback
# ports from temp prefixes under $(BUILD)/svc-test.
test-service: $(FLUXCGI) tiny-model $(NPM_OPENAI)
	@echo "  TEST    service (fluxcgi behind nginx and lighttpd)"
	$(Q)FLUXCGI=$(CURDIR)/$(FLUXCGI) FLUX_MODEL=$(CURDIR)/$(TINY_DIR) \
		SVC_TEST_DIR=$(CURDIR)/$(BUILD)/svc-test NPM_DIR=$(CURDIR)/$(NPM_DIR) \
		$(PYTHON) -m unittest discover -s tests/service -t . $(if $(V),-v,)

# Not a test: wrk against /ping and /queue/status through nginx, and the durable enqueue
# rate, next to the same endpoints in a minimal FastAPI + uvicorn app.  FLUXCGI_BEFORE=BINARY
# (built from an earlier commit) adds the fast endpoints of both binaries, in turns.
FLUXCGI_BEFORE ?=
bench-service: $(FLUXCGI) tiny-model
	$(Q)FLUXCGI=$(CURDIR)/$(FLUXCGI) FLUX_MODEL=$(CURDIR)/$(TINY_DIR) \
		SVC_TEST_DIR=$(CURDIR)/$(BUILD)/svc-bench FLUXCGI_BEFORE=$(FLUXCGI_BEFORE) \
		$(PYTHON) tests/bench/bench_service.py

# Serves $(RUN_MODEL) through nginx on http://127.0.0.1:$(RUN_PORT) in the foreground.
run: deps $(FLUXCGI) $(if $(MODEL),,tiny-model)
	$(Q)tools/run.sh --fluxcgi $(FLUXCGI) --model $(RUN_MODEL) --dir $(RUN_DIR) \
		--port $(RUN_PORT) $(if $(MODEL),,--tiny)

bench: bench-service

# ---------------------------------------------------------------------------
# Install: PREFIX (default /usr/local) and DESTDIR as usual.  The programs find their
# plugins in PREFIX/lib/fluxcgi (beside the binary, ../lib/fluxcgi).  The config in
# SYSCONFDIR/fluxcgi/ is written only when absent; the site files are regenerated.

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
PKGLIBDIR  ?= $(PREFIX)/lib/fluxcgi
SHAREDIR   ?= $(PREFIX)/share/fluxcgi
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
# what the installed config and site files point at (the unit's runtime/state/log folders)
SOCKET_PATH ?= /run/fluxcgi/fluxcgi.sock
STATE_DIR  ?= /var/lib/fluxcgi
LOG_FILE   ?= /var/log/fluxcgi/fluxcgi.log
SITE_LISTEN ?= 80
D          := $(DESTDIR)
CONF_FILES := fluxcgi.conf nginx.conf fluxcgi-site.conf fluxcgi-hosts-site.conf lighttpd.conf \
              lighttpd-site.conf prometheus.yml
FILL_SITE   = sed -e 's|@LISTEN@|$(SITE_LISTEN)|g' -e 's|@SOCKET@|$(SOCKET_PATH)|g' \
                  -e 's|@CONF@|$(SHAREDIR)/conf|g' \
                  -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

.PHONY: install uninstall test-deploy

install: $(FLUXGEN) $(FLUXCGI) $(PLUGINS)
	@echo "  INSTALL $(D)$(PREFIX)"
	$(Q)install -d $(D)$(BINDIR) $(D)$(PKGLIBDIR)/python/fluxexport $(D)$(PKGLIBDIR)/python/data \
		$(D)$(SHAREDIR)/conf/errors $(D)$(SYSCONFDIR)/fluxcgi $(D)$(UNITDIR) $(D)$(SYSUSERSDIR)
	$(Q)install -m 0755 $(FLUXCGI) $(FLUXGEN) $(D)$(BINDIR)/
	$(Q)install -m 0644 $(PLUGINS) $(D)$(PKGLIBDIR)/
	$(Q)install -m 0644 export/fluxexport/*.py $(D)$(PKGLIBDIR)/python/fluxexport/
	$(Q)install -m 0644 export/data/tiny_corpus.txt $(D)$(PKGLIBDIR)/python/data/
	$(Q)printf '#!/bin/sh\n# fluxexport: FLUX checkpoints -> fluxcgi model dirs (docs/operations.md)\n# Runs on $$PYTHON when set, else on %s.  To export for CUDA, use a Python with a CUDA\n# build of PyTorch: PYTHON=/path/to/venv/bin/python fluxexport export ... --device cuda\nPYTHONPATH=%s$${PYTHONPATH:+:$$PYTHONPATH} exec "$${PYTHON:-%s}" -m fluxexport "$$@"\n' \
		'$(PYTHON)' '$(PKGLIBDIR)/python' '$(PYTHON)' > $(D)$(BINDIR)/fluxexport
	$(Q)chmod 0755 $(D)$(BINDIR)/fluxexport
	$(Q)install -m 0644 $(addprefix conf/,$(CONF_FILES)) $(D)$(SHAREDIR)/conf/
	$(Q)install -m 0644 conf/errors/* $(D)$(SHAREDIR)/conf/errors/
	$(Q)install -d $(D)$(SHAREDIR)/conf/docs
	$(Q)install -m 0644 conf/docs/* $(D)$(SHAREDIR)/conf/docs/
	$(Q)install -m 0644 sql/schema.sql README.md $(D)$(SHAREDIR)/
	$(Q)install -d $(D)$(SHAREDIR)/docs
	$(Q)install -m 0644 docs/*.md $(D)$(SHAREDIR)/docs/
	$(Q)sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
		-e 's|@SHAREDIR@|$(SHAREDIR)|g' conf/fluxcgi.service.in > $(D)$(UNITDIR)/fluxcgi.service
	$(Q)sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
		-e 's|@SHAREDIR@|$(SHAREDIR)|g' conf/fluxcgi@.service.in > $(D)$(UNITDIR)/fluxcgi@.service
	$(Q)install -m 0644 conf/fluxcgi.sysusers $(D)$(SYSUSERSDIR)/fluxcgi.conf
	$(Q)$(FILL_SITE) conf/fluxcgi-site.conf > $(D)$(SYSCONFDIR)/fluxcgi/nginx-site.conf
	$(Q)$(FILL_SITE) conf/lighttpd-site.conf > $(D)$(SYSCONFDIR)/fluxcgi/lighttpd-site.conf
	$(Q)if [ ! -e $(D)$(SYSCONFDIR)/fluxcgi/fluxcgi.conf ]; then \
		sed -e 's|@SOCKET@|$(SOCKET_PATH)|' -e 's|@DB@|$(STATE_DIR)/jobs.db|' \
		    -e 's|@MODEL@|$(STATE_DIR)/model|' -e 's|@LOG@|$(LOG_FILE)|' \
		    -e 's|^device = @DEVICE@ *|# device = cuda    |' \
		    conf/fluxcgi.conf > $(D)$(SYSCONFDIR)/fluxcgi/fluxcgi.conf; \
	else echo "  KEEP    $(D)$(SYSCONFDIR)/fluxcgi/fluxcgi.conf (exists)"; fi

uninstall:
	@echo "  UNINSTALL $(D)$(PREFIX)"
	$(Q)rm -f $(D)$(BINDIR)/fluxcgi $(D)$(BINDIR)/fluxgen $(D)$(BINDIR)/fluxexport \
		$(D)$(UNITDIR)/fluxcgi.service $(D)$(UNITDIR)/fluxcgi@.service \
		$(D)$(SYSUSERSDIR)/fluxcgi.conf \
		$(D)$(SYSCONFDIR)/fluxcgi/nginx-site.conf $(D)$(SYSCONFDIR)/fluxcgi/lighttpd-site.conf
	$(Q)rm -rf $(D)$(PKGLIBDIR) $(D)$(SHAREDIR)
	$(Q)if [ -e $(D)$(SYSCONFDIR)/fluxcgi/fluxcgi.conf ]; then \
		echo "  KEEP    $(D)$(SYSCONFDIR)/fluxcgi/fluxcgi.conf (remove it by hand)"; \
	else rmdir $(D)$(SYSCONFDIR)/fluxcgi 2>/dev/null || true; fi

# make install into temp prefixes; the installed fluxcgi behind nginx; the unit verified.
test-deploy: $(FLUXGEN) $(FLUXCGI) $(PLUGINS) tiny-model
	@echo "  TEST    deploy (make install, installed fluxcgi behind nginx, systemd unit)"
	$(Q)FLUX_MODEL=$(CURDIR)/$(TINY_DIR) FLUXGEN=$(CURDIR)/$(FLUXGEN) $(PYTHON) -m unittest \
		discover -s tests/deploy -t . \
		$(if $(V),-v,)

# ---------------------------------------------------------------------------

test: format-check test-c test-export test-pipeline test-service test-deploy test-fuzz

clean:
	rm -rf $(BUILD)

# ---------------------------------------------------------------------------
# Robustness: libFuzzer targets (tests/fuzz/), the chaos and load tests against a live stack,
# the service bench.  The fuzz targets and every source they reach are compiled by clang with
# -fsanitize=fuzzer-no-link,address,undefined under $(BUILD)/fuzz, apart from the gcc build;
# the T5 target reaches SentencePiece through an instrumented plugin in $(BUILD)/fuzz/lib.
# A new target is tests/fuzz/fuzz_NAME.c, its seeds in tests/fuzz/corpus/NAME/ (and an
# optional tests/fuzz/NAME.dict), and NAME added to FUZZ_TARGETS.

FUZZ_TARGETS := parse_generate api_handle config tok_clip tok_t5 fcgi_proto
# safetensors headers and LoRA files checked against a small map (tests/fuzz/fuzz_lora.c)
FUZZ_TARGETS += lora
FUZZ_SECONDS ?= 60
# test-fuzz: the committed corpus, then a short bounded mutation run per target
FUZZ_TEST_SECONDS ?= 10
FUZZ_CC      := clang
FUZZ_CXX     := clang++
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# Not -Werror for the library sources: gcc's build enforces the warnings; clang may add some.
FUZZ_CFLAGS   = -std=c17 -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link $(CWARN:-Werror=)
FUZZ_OBJ     := $(CORE_C:%.c=$(FUZZ_DIR)/obj/%.o) $(SVC_C:%.c=$(FUZZ_DIR)/obj/%.o) \
                $(SVC_GEN:%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_LIB     := $(FUZZ_DIR)/libfluxfuzz.a
FUZZ_T5      := $(FUZZ_DIR)/lib/libfluxt5.so
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
C_SRC_ALL    += $(wildcard tests/fuzz/*.c)
# what the targets read at start (tests/fuzz/fuzz_tok_*.c)
FUZZ_ENV      = FLUX_FUZZ_CLIP=$(TOK_TINY)/tokenizer \
                FLUX_FUZZ_T5=$(TOK_TINY)/tokenizer_2/spiece.model \
                FLUXCGI_LIBDIR=$(CURDIR)/$(FUZZ_DIR)/lib \
                ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
FUZZ_ARGS     = -timeout=20 -rss_limit_mb=2048 -artifact_prefix=$(FUZZ_DIR)/crash-$$t- \
                $$(test -f tests/fuzz/$$t.dict && echo -dict=tests/fuzz/$$t.dict)

# Chaos (kill -9 of fluxcgi at every phase) and load (many connections on the status
# endpoints): the short runs are part of test-service; these are the long ones.
CHAOS_JOBS   ?= 40
LOAD_CONNS   ?= 1000
LOAD_SECONDS ?= 60
SVC_ENV       = FLUXCGI=$(CURDIR)/$(FLUXCGI) FLUX_MODEL=$(CURDIR)/$(TINY_DIR) \
                SVC_TEST_DIR=$(CURDIR)/$(BUILD)/svc-test

.PHONY: fuzz test-fuzz fuzz-build chaos load

fuzz-build: $(FUZZ_BIN)

$(FUZZ_DIR)/obj/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC fuzz $<"
	$(Q)$(FUZZ_CC) $(C_CPPFLAGS) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_DIR)/pic/%.o: %.c | deps
	@mkdir -p $(@D)
	@echo "  CC fuzz $< (pic)"
	$(Q)$(FUZZ_CC) $(C_CPPFLAGS) $(FUZZ_CFLAGS) -fPIC -c $< -o $@

$(FUZZ_DIR)/pic/%.o: %.cc | deps
	@mkdir -p $(@D)
	@echo "  CXX fuzz $< (pic)"
	$(Q)$(FUZZ_CXX) $(C_CPPFLAGS) -std=c++17 -O1 -g $(FUZZ_SAN) -fno-sanitize=vptr \
		-fsanitize=fuzzer-no-link $(CXXWARN:-Werror=) -fPIC -c $< -o $@

$(FUZZ_LIB): $(FUZZ_OBJ)
	@echo "  AR fuzz $@"
	$(Q)rm -f $@ && ar rcs $@ $^

# The sanitizer runtimes live in the fuzz program (linked by clang++, so that new and delete
# are ASan's too); the plugin's references resolve there.  UBSan's vptr check is off in the
# plugin: its runtime part is not in a program whose main is C.
$(FUZZ_T5): $(call T5_PIC,$(FUZZ_DIR))
	@mkdir -p $(@D)
	@echo "  SO fuzz $@"
	$(Q)$(FUZZ_CXX) -shared -Wl,-Bsymbolic -o $@ $^ $(PLUGIN_T5_LIBS)

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB) | $(FUZZ_T5)
	@echo "  LINK fuzz $@"
	$(Q)$(FUZZ_CC) $(C_CPPFLAGS) -std=c17 -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer $(CWARN) \
		-c $< -o $@.o
	$(Q)$(FUZZ_CXX) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $@.o $(FUZZ_LIB) $(SVC_LIBS) \
		$(C_DEPS_LIBS)

# Each target for FUZZ_SECONDS; new inputs go to $(BUILD)/fuzz/corpus/NAME (copy the
# interesting ones into tests/fuzz/corpus/NAME), crashes to $(BUILD)/fuzz/crash-NAME-*.
fuzz: $(FUZZ_BIN) $(TOK_TINY)/.stamp
	$(Q)set -e; for t in $(FUZZ_TARGETS); do echo "  FUZZ    $$t ($(FUZZ_SECONDS) s)"; \
		mkdir -p $(FUZZ_DIR)/corpus/$$t; \
		$(FUZZ_ENV) $(FUZZ_DIR)/fuzz_$$t $(FUZZ_ARGS) -max_total_time=$(FUZZ_SECONDS) \
		-print_final_stats=1 $(FUZZ_DIR)/corpus/$$t tests/fuzz/corpus/$$t; done

# Part of test: every committed seed, then FUZZ_TEST_SECONDS of mutation from a fixed seed.
test-fuzz: $(FUZZ_BIN) $(TOK_TINY)/.stamp
	$(Q)set -e; for t in $(FUZZ_TARGETS); do echo "  FUZZ    $$t (corpus + $(FUZZ_TEST_SECONDS) s)"; \
		rm -rf $(FUZZ_DIR)/test-corpus/$$t; mkdir -p $(FUZZ_DIR)/test-corpus/$$t; \
		$(FUZZ_ENV) $(FUZZ_DIR)/fuzz_$$t $(FUZZ_ARGS) -seed=1 \
		-max_total_time=$(FUZZ_TEST_SECONDS) $(FUZZ_DIR)/test-corpus/$$t tests/fuzz/corpus/$$t \
		2> $(FUZZ_DIR)/test-$$t.log || { tail -n 60 $(FUZZ_DIR)/test-$$t.log; exit 1; }; \
		grep -h '^#[0-9]*.*DONE' $(FUZZ_DIR)/test-$$t.log || true; done

chaos: $(FLUXCGI) $(FLUXGEN) tiny-model
	@echo "  TEST    chaos ($(CHAOS_JOBS) jobs, kill -9 of fluxcgi at every phase)"
	$(Q)$(SVC_ENV) FLUXGEN=$(CURDIR)/$(FLUXGEN) CHAOS_JOBS=$(CHAOS_JOBS) $(PYTHON) -m unittest \
		tests.service.test_chaos $(if $(V),-v,)

load: $(FLUXCGI) tiny-model
	@echo "  TEST    load ($(LOAD_CONNS) connections, $(LOAD_SECONDS) s)"
	$(Q)$(SVC_ENV) LOAD_CONNS=$(LOAD_CONNS) LOAD_SECONDS=$(LOAD_SECONDS) $(PYTHON) -m unittest \
		tests.service.test_load $(if $(V),-v,)

-include $(shell find $(FUZZ_DIR) -name '*.d' 2>/dev/null)
