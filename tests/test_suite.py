"""The suite's own scheduling table (conftest.SHARED_WORKER) names tests that exist: a
renamed test would silently leave its group and cost the suite a worker's torch import."""

from __future__ import annotations

import importlib

from .conftest import SHARED_WORKER


def test_every_shared_worker_entry_names_a_real_test():
    for group, tests in SHARED_WORKER.items():
        for test in tests:
            module_file, _, name = test.partition("::")
            name, _, param = name.partition("[")
            module = importlib.import_module(f"tests.{module_file.removesuffix('.py')}")
            func = getattr(module, name, None)
            assert callable(func), f"{group}: {test} is not a test in {module_file}"
            if param:
                values = [getattr(v, "values", (v,))[0] for mark in func.pytestmark
                          if mark.name == "parametrize" for v in mark.args[1]]
                assert param.rstrip("]") in values, f"{group}: {test} names no parameter"
