# movielens-recs: `make run` sets up and runs the pipeline on the embedded corpus;
# `make test` sets up and runs the test suite. Only a JDK (17+) must be installed by hand.

# Python 3.10-3.13 (each checked with `make run` and the tests, BENCHMARKS.md session 28);
# another one: make PYTHON_BIN=/path/to/python3.12 run
PYTHON_BIN ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 \
                || command -v python3.10 || command -v python3)
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
ARTIFACTS  ?= artifacts
# The Spark SQL catalog the tables are registered in. A catalog knows one place per table,
# so another artifact root gets a catalog of its own, inside it.
ifeq ($(ARTIFACTS),artifacts)
METASTORE  ?= metastore
else
METASTORE  ?= $(ARTIFACTS)/metastore
endif
# What every pipeline target gives its job: the embedded corpus's configuration, the root
# and its catalog.
JOB_ARGS   = --conf-file conf/default.toml --artifact-root $(ARTIFACTS) \
             --set spark.metastore_dir=$(METASTORE)
SYNTHETIC  ?= data/synthetic/ml-25m-synthetic
DRIVER_MEMORY ?= 6g

export PYSPARK_PYTHON        := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export TF_USE_LEGACY_KERAS   := 1
SPARK_SUBMIT := $(VENV)/bin/spark-submit --master local[2] --driver-memory $(DRIVER_MEMORY) \
  --driver-java-options "-Dlog4j2.configurationFile=$(abspath conf/log4j2.properties)"

RELEASE ?= ml-25m

.PHONY: help check-java venv test run preprocess train index score evaluate corpus download bench-preprocess \
        bench-train bench-train-quality bench-tradeoff bench-splits bench-score bench-worker clean

help:
	@echo "make run               set up, then run the nightly pipeline on data/ml-latest-small"
	@echo "make test              set up, then run the tests"
	@echo "make preprocess|train|index|score|evaluate  one stage on the embedded corpus (ARTIFACTS=dir, default artifacts)"
	@echo "make corpus            generate the full-scale synthetic corpus ($(SYNTHETIC))"
	@echo "make download RELEASE=ml-25m  fetch an official release (MD5-checked) into data/downloads"
	@echo "make bench-preprocess  time preprocessing of the full-scale corpus"
	@echo "make bench-train       time training on the full-scale corpus"
	@echo "make bench-train-quality  two-tower vs MF vs most-popular on ml-latest-small"
	@echo "make bench-tradeoff    the popularity each model needs on the random split, and its cost"
	@echo "make bench-splits      two-tower vs ALS, EASE, most-popular over five splits of ml-latest-small"
	@echo "make bench-score       time score_all_users on the full-scale corpus, next to ALS"
	@echo "make bench-worker BENCH_ROOT=dir  one scoring worker's Python work, phase by phase"
	@echo "make clean             remove artifacts and the virtual environment"

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "ERROR: Java not found. Spark needs a JDK 17 or newer:"; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; \
	  echo "  macOS:         brew install openjdk@17"; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	 if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "ERROR: Java $$v found; Spark 4 needs 17 or newer (apt-get install -y openjdk-17-jre-headless)"; \
	  exit 1; fi

$(STAMP): setup.py
	@test -n "$(PYTHON_BIN)" || { echo "ERROR: no python3 found (3.10-3.13 needed)"; exit 1; }
	@command -v "$(PYTHON_BIN)" >/dev/null || { echo "ERROR: PYTHON_BIN=$(PYTHON_BIN) not found"; exit 1; }
	@$(PYTHON_BIN) -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' || { \
	  echo "ERROR: $(PYTHON_BIN) is Python $$($(PYTHON_BIN) -c 'import platform; print(platform.python_version())'); 3.10-3.13 needed:"; \
	  echo "  make PYTHON_BIN=/path/to/python3.12 $(MAKECMDGOALS)"; exit 1; }
	$(PYTHON_BIN) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

test: check-java venv
	$(PY) -m pytest -q tests

preprocess: check-java venv
	$(SPARK_SUBMIT) jobs/preprocess.py $(JOB_ARGS)

train: venv
	$(PY) jobs/train.py $(JOB_ARGS)

index: venv
	$(PY) jobs/build_index.py $(JOB_ARGS)

score: check-java venv
	$(SPARK_SUBMIT) jobs/score_all_users.py $(JOB_ARGS)

evaluate: check-java venv
	$(SPARK_SUBMIT) jobs/evaluate.py $(JOB_ARGS)

# The nightly pipeline, as cron runs it: preprocess -> train -> index -> score -> evaluate.
run: check-java venv
	$(PY) jobs/nightly.py $(JOB_ARGS)

$(SYNTHETIC)/ratings.csv: | venv
	$(PY) jobs/make_synthetic_corpus.py --out $(SYNTHETIC)

corpus: $(SYNTHETIC)/ratings.csv

download: venv
	$(PY) jobs/download_movielens.py $(RELEASE) --dest data/downloads

bench-preprocess: check-java venv corpus
	$(PY) benchmarks/bench_preprocess.py --input $(SYNTHETIC) --driver-memory $(DRIVER_MEMORY)

bench-train: check-java venv corpus
	$(PY) benchmarks/bench_train.py --input $(SYNTHETIC) --driver-memory $(DRIVER_MEMORY)

bench-train-quality: check-java venv
	$(PY) benchmarks/bench_train.py --quality-small

bench-tradeoff: check-java venv
	$(PY) benchmarks/popularity_tradeoff.py

bench-splits: check-java venv
	$(PY) benchmarks/split_seeds.py

bench-score: check-java venv corpus
	$(PY) benchmarks/bench_score.py --input $(SYNTHETIC) --driver-memory $(DRIVER_MEMORY) \
	  $(if $(BENCH_ROOT),--artifact-root $(BENCH_ROOT))

bench-worker: venv
	@test -n "$(BENCH_ROOT)" || { echo "ERROR: set BENCH_ROOT to a root with preprocess, train and index runs (e.g. the one make bench-score used)"; exit 2; }
	$(PY) benchmarks/bench_worker.py --artifact-root $(BENCH_ROOT)

clean:
	rm -rf $(ARTIFACTS) $(VENV) logs metastore spark-warehouse metastore_db derby.log
