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


TENTH_METHOD = '''
from peft import IA3Config, PeftModel, get_peft_model

from instructmt.adapters.base import AdapterMethod
from instructmt.adapters.lora import peft_task_type


class IA3Method(AdapterMethod):
    name = "ia3"

    def apply(self, model, cfg, task_names):
        return get_peft_model(model, IA3Config(task_type=peft_task_type(model), target_modules=cfg.target_modules))

    def load(self, base_model, adapter_dir):
        return PeftModel.from_pretrained(base_model, str(adapter_dir))
'''


def test_a_tenth_method_is_its_own_module_plus_one_catalog_line(tmp_path, monkeypatch):
    """docs/architecture.md's worked example: a method in its own module and one catalog line."""
    from instructmt.adapters.base import get_adapter
    from instructmt.config import AdapterConfig
    from instructmt.models.tiny import tiny_t5_model

    (tmp_path / "my_ia3.py").write_text(TENTH_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ADAPTERS, "_items", dict(ADAPTERS._items))  # restored after the test
    monkeypatch.setitem(ADAPTERS._builtins, "ia3", "my_ia3:IA3Method")  # the one catalog line
    assert "ia3" in ADAPTERS.names()
    model = get_adapter("ia3").apply(tiny_t5_model(64), AdapterConfig(method="ia3"), [])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("ia3" in n for n in trainable)
