# distill: one-command setup, build and test.
#   make setup   .venv with torch 2.11.0 + reference libraries, the student model, release build
#   make test    fmt, clippy, reference fixtures, unit + integration tests
#   make demo    the whole pipeline on the embedded demo dataset (data/demo), setup included
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STUDENT := models/all-MiniLM-L6-v2

# tch builds against the libtorch inside the venv's torch wheel.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

.PHONY: setup venv student build fixtures test lint demo demo-data bench-cpu bench-gpu clean

setup: venv student build

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

student: $(STUDENT)/.verified

$(STUDENT)/.verified: $(VENV)/.installed scripts/fetch_student.py
	$(PY) scripts/fetch_student.py $(STUDENT)
	touch $@

build: venv
	cargo build --release

fixtures: venv student
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) scripts/make_fixtures.py
	$(PY) scripts/make_beir_fixture.py tests/fixtures/generated/beir_tiny
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) scripts/make_train_reference.py tests/fixtures/generated/train_reference.json
	$(PY) scripts/make_eval_reference.py tests/fixtures/generated/eval_reference.json
	$(PY) scripts/make_flops_reference.py tests/fixtures/generated/flops_reference.json

lint: venv
	cargo fmt --check
	cargo clippy --all-targets --release -- -D warnings

test: setup lint fixtures
	cargo test --release -- --test-threads=2

# The demo dataset is committed; this regenerates it (byte-identical) from its script.
demo-data:
	$(PYTHON) scripts/make_demo_data.py

demo: setup
	target/release/distill run pipelines/demo.toml

# On a machine with a GPU (and the venv): distill vs PyTorch on W1-W4 (BENCHMARKS.md).
bench-gpu: setup
	target/release/distill bench --device cuda --python $(PY) --seconds 8

bench-cpu: setup
	bash scripts/bench_cpu_encode.sh

clean:
	cargo clean
	rm -rf tests/fixtures/generated
