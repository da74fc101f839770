"""The catalog of built-ins: every lazy entry loads, under the name it is listed as."""

from instructmt.catalog import ADAPTERS, FORMATS, METRICS
from instructmt.errors import RegistryError
from instructmt.registry import Registry

import pytest


def test_every_builtin_loads_under_its_own_name():
    for name, method in ADAPTERS.items():
        assert method.name == name
    for name, fmt in FORMATS.items():
        assert fmt.name == name
    for name, metric in METRICS.items():
        assert metric.name == name


def test_names_are_known_before_anything_is_imported():
    reg = Registry("thing", {"lazy": "instructmt.no_such_module:X"})
    assert "lazy" in reg and reg.names() == ["lazy"]
    with pytest.raises(ModuleNotFoundError):
        reg.get("lazy")


def test_a_builtin_module_that_does_not_register_its_name_is_an_error():
    reg = Registry("thing", {"ghost": "instructmt.errors"})
    with pytest.raises(RegistryError, match="did not register"):
        reg.get("ghost")


def test_unknown_name_suggests_near_ones_including_unloaded_builtins():
    reg = Registry("thing", {"rougeL": "instructmt.evaluation.metrics"})
    with pytest.raises(RegistryError, match="did you mean 'rougeL'"):
        reg.get("rougel")
