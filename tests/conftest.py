"""
pytest glue: run the suite from a scratch working directory, as trial does
(``_trial_temp``), so ``TestCase.mktemp()`` and anything else written to a
relative path never lands in the source tree.
"""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_working_directory(tmp_path_factory):
    old = os.getcwd()
    os.chdir(str(tmp_path_factory.mktemp("txcb-cwd")))
    try:
        yield
    finally:
        os.chdir(old)
