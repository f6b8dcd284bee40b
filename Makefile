# The two commands a newcomer types: `make demo` and `make test`. Both set up what they need first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV := source scripts/env.sh
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: help setup test demo lint selftest clean

help:
	@echo "make demo   - end-to-end demo: record, cache, train, deploy in simulation (out/demo/); QUICK=1: ~5 min"
	@echo "              ROBOT=gr1_humanoid: the GR-1 humanoid with both hands (out/demo_gr1_humanoid/)"
	@echo "make test   - set up if needed, then run every package's tests"
	@echo "make setup  - only the set-up (apt packages, .venv, colcon build); idempotent"
	@echo "make lint   - ruff over the workspace"
	@echo "make selftest - two nodes exchange lda_msgs over DDS through lda-launch"

setup:
	@bash scripts/setup.sh

test: setup
	@$(ENV) && scripts/run_tests.sh $(PYTEST_ARGS)

lint: setup
	@$(ENV) && ruff check .

selftest: setup
	@$(ENV) && lda-launch launch/selftest.launch.yaml

demo: setup
	@$(ENV) && lda-demo $(if $(QUICK),--quick) $(if $(ROBOT),--robot $(ROBOT)) $(DEMO_ARGS)

clean:
	rm -rf build install log out
