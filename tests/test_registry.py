"""A test's own choice is registered for the test only: the registry is as it was afterwards."""
import pytest

from harness.preflight import REGISTRIES
from harness.registry import Registry
from harness.search import PRUNERS


def never_prune(search):
    """Prunes nothing (a test's own pruner)."""


def test_temporarily_registers_for_the_block_only_and_restores_the_registry():
    before = PRUNERS.names()
    with PRUNERS.temporarily("test_never_prune", never_prune, per_eval=False) as registered:
        assert registered is never_prune and PRUNERS.get("test_never_prune") is never_prune
        assert PRUNERS.names() == sorted([*before, "test_never_prune"])
        assert PRUNERS.describe("test_never_prune") == "Prunes nothing (a test's own pruner)."
        assert never_prune.per_eval is False
    assert PRUNERS.names() == before and "test_never_prune" not in PRUNERS
    with pytest.raises(KeyError, match="unknown pruner 'test_never_prune'"):
        PRUNERS.get("test_never_prune")


def test_validate_accepts_a_temporary_name_only_inside_the_block(class_folder_competition, cli):
    comp = class_folder_competition()
    with PRUNERS.temporarily("test_never_prune", never_prune, per_eval=False):
        assert "ok" in cli("validate", comp, "--set", "search.pruner=test_never_prune").output
    out = cli("validate", comp, "--set", "search.pruner=test_never_prune", ok=False).output
    assert "'search.pruner': unknown value 'test_never_prune'" in out


def test_the_registry_is_restored_when_the_block_raises():
    registry = Registry("thing")
    registry.register("kept")(never_prune)
    with pytest.raises(RuntimeError, match="inside"):
        with registry.temporarily("gone", lambda: None):
            raise RuntimeError("inside")
    assert registry.names() == ["kept"]


def test_a_name_taken_already_is_refused_and_stays_registered():
    registry = Registry("thing")
    registry.register("kept")(never_prune)
    with pytest.raises(ValueError, match="thing 'kept' is registered twice"):
        with registry.temporarily("kept", lambda: None):
            pass  # pragma: no cover - never entered
    assert registry.get("kept") is never_prune


def test_unregister_removes_one_name_and_refuses_an_unknown_one():
    registry = Registry("thing")
    registry.register("a")(never_prune)
    registry.register("b")(test_unregister_removes_one_name_and_refuses_an_unknown_one)
    assert registry.unregister("a") is never_prune and registry.names() == ["b"]
    with pytest.raises(KeyError, match="thing 'a' is not registered"):
        registry.unregister("a")


def wrapped(search):
    """Prunes nothing, described over two
    lines (a test's own pruner).

    A second paragraph, left out of the line."""


def test_list_describes_each_choice_by_its_whole_first_paragraph(cli):
    out = cli("list", "metrics").output
    [line] = [line for line in out.splitlines() if line.startswith("roc_auc ")]
    assert line.split(None, 1)[1] == ("Area under the ROC curve (binary), or one-vs-rest macro AUC (multiclass); "
                                      "fold models' scores pooled as percentiles within their fold.")
    with PRUNERS.temporarily("test_wrapped", wrapped, per_eval=False):
        assert PRUNERS.describe("test_wrapped") == "Prunes nothing, described over two lines (a test's own pruner)."
    for what in REGISTRIES:
        for line in cli("list", what).output.splitlines():
            assert line.rstrip().endswith((".", ")")), f"{what}: {line}"  # never cut mid-sentence
