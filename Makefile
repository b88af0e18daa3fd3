# Two commands on a fresh machine: `make demo` and `make test`.
# Every pip step is constrained by constraints.txt so that torch stays the local CPU wheel.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install -q -c constraints.txt
BENCHV  ?= .venv-bench
DEBS    := dataset-fashion-mnist fonts-noto-color-emoji chromium chromium-driver

.PHONY: demo test bench docs install data clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,text,plot,trust,hf]'
	touch $@

install: $(VENV)/.installed

# Debian packages (Fashion-MNIST, the emoji font; Chromium and its driver for the browser check of the trust report). Missing apt or no root: a clear message, not a failure;
# the code that needs them names the package again when it is run.
data:
	@missing=""; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing="$$missing fonts-noto-color-emoji"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
	      || echo "xrisk: could not install Debian package(s):$$missing; tests that need them are skipped"; \
	  else \
	    echo "xrisk: Debian package(s) missing:$$missing (run: sudo apt-get install$$missing); tests that need them are skipped"; \
	  fi; \
	fi

demo: install data
	$(VENV)/bin/xrisk demo

test: install data
	$(PY) -m pytest -q -p no:cacheprovider

$(BENCHV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(BENCHV)
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt --upgrade pip
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BENCHV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,text,plot,bench,trust,hf,browser]'
	touch $@

bench: $(BENCHV)/.installed data
	$(BENCHV)/bin/python -m pytest -q -p no:cacheprovider -m slow
	$(BENCHV)/bin/python bench/run_all.py

# mkdocs.yml's hook (docs/hooks.py -> docs/gen_pages.py) writes the generated, git-ignored pages
# (docs/api/, docs/index.md from README.md, docs/benchmarks.md from bench/RESULTS.md) on every build.
# The build needs no network; the pages load MathJax from a CDN in the browser.
docs: install
	$(PIP) -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) $(BENCHV) site build *.egg-info
