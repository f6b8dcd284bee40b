"""The whole test run's safety net (pytest loads this for every test under src/ and tests/).

Every process a test starts inherits ``LDA_TEST_RUN=<token>`` from the environment set here; whatever still
carries it when the run ends (a node a test forgot, an orphan of a killed launch) is killed and reported, so
nothing a run started keeps a CPU busy for the next one. Single tests end their own processes through
lda_testing.processes (run_tree, NodeProcess).
"""

import os
import uuid

RUN_MARKER = "LDA_TEST_RUN"


def pytest_configure(config):
    os.environ[RUN_MARKER] = uuid.uuid4().hex


def pytest_unconfigure(config):
    from lda_testing.processes import kill_tree

    token = os.environ.get(RUN_MARKER)
    if token:
        left = kill_tree(token, variable=RUN_MARKER)
        if left:
            print(f"\nconftest: killed {len(left)} process(es) the tests left running: {left}")
