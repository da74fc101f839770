"""Molecular-text tasks: ChEBI-20 both directions, USPTO forward/retro, actions; exact prefixes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from instructmt.errors import TaskFormatError
from instructmt.prompts.render import PromptRenderer
from instructmt.tasks import molecular
from instructmt.tasks.registry import detect_format, load_path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "chebi20"
BUNDLED = REPO / "tasks" / "families" / "molecular"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="shared ChEBI-20 samples absent")


def test_exact_prefixes():
    assert molecular.PREFIXES == {
        "forward": "Predict the product of the following reaction: ",
        "retro": "Predict the reaction that produces the following product: ",
        "actions": "Which actions are described in the following paragraph: ",
        "text2mol": "Write in SMILES the described molecule: ",
        "captioning": "Caption the following SMILES: ",
    }


@needs_shared
def test_chebi20_both_directions():
    path = SHARED / "test.txt"
    assert detect_format(path).name == "chebi20_tsv"
    cap, t2m = load_path(path)
    assert cap.name == "chebi20_captioning_test" and t2m.name == "chebi20_text2mol_test"
    assert len(cap.instances) == len(t2m.instances) == 300
    c0, m0 = cap.instances[0], t2m.instances[0]
    assert c0.input.startswith("Caption the following SMILES: C[C@]12CCC(=O)C=C1")
    assert c0.outputs[0].startswith("The molecule is a steroid ester")
    assert m0.input == "Write in SMILES the described molecule: " + c0.outputs[0]
    assert m0.outputs == [c0.fields["text"]]
    assert cap.metrics[0] == "text_bleu2" and t2m.metrics[0] == "smiles_exact" and cap.encoding == "prefix"


@needs_shared
def test_uspto_forward_and_retro_without_atom_maps():
    from rdkit import Chem
    fwd, retro = load_path(SHARED / "uspto50k" / "raw_valid.csv")
    assert len(fwd.instances) == len(retro.instances) == 500
    f0, r0 = fwd.instances[0], retro.instances[0]
    assert f0.input.startswith("Predict the product of the following reaction: ")
    assert r0.input == "Predict the reaction that produces the following product: " + f0.outputs[0]
    assert r0.outputs == [f0.fields["text"]]
    for inst in fwd.instances[:50]:
        assert not re.search(r":\d+\]", inst.input + inst.outputs[0])
        assert Chem.MolToSmiles(Chem.MolFromSmiles(inst.outputs[0])) == inst.outputs[0]  # canonical
    assert fwd.extra["canonicalised"] is True


def test_atom_map_stripping_and_canonical():
    mapped = "[CH3:1][C:2](=[O:3])[O:7][CH2:6][CH3:5]"
    assert molecular.strip_atom_maps(mapped) == "[CH3][C](=[O])[O][CH2][CH3]"
    assert molecular.canonical_reaction_smiles(mapped) == "CCOC(C)=O"
    assert molecular.canonical_reaction_smiles("not a smiles") == "not a smiles"


def test_split_reaction():
    assert molecular.split_reaction("CC(=O)O.OCC>>CCOC(C)=O") == ("CC(=O)O.OCC", "", "CCOC(C)=O")
    with pytest.raises(ValueError):
        molecular.split_reaction("CCO")


def test_bundled_molecular_yaml_and_prefix_encoding():
    from instructmt.tasks.yaml_spec import load_task_yaml
    tasks = {t.name: t for t in load_task_yaml(REPO / "tasks" / "families" / "molecular.yaml")}
    assert set(tasks) == {"mol_chebi20_captioning_chebi_sample", "mol_chebi20_text2mol_chebi_sample",
                          "rxn_uspto_forward_reactions_sample", "rxn_uspto_retro_reactions_sample",
                          "mol_actions"}
    fwd = tasks["rxn_uspto_forward_reactions_sample"]
    mapped = fwd.instances[-1]  # the atom-mapped methylamine amide, canonicalised on load
    assert mapped.input == "Predict the product of the following reaction: CC(=O)O.CN" and mapped.outputs == ["CNC(C)=O"]
    actions = tasks["mol_actions"]
    assert any(i.outputs == ["NOACTION."] for i in actions.instances)
    inst = actions.instances[0]
    assert inst.input.startswith("Which actions are described in the following paragraph: To a solution of")
    assert PromptRenderer("def+pos2").render(actions, inst) == inst.input  # `prefix` adds nothing


def test_bad_chebi_row_names_line(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("CID\tSMILES\tdescription\n1\tCCO\tethanol\n2\tCC\n")
    with pytest.raises(TaskFormatError) as err:
        molecular.load_chebi20(p)
    assert "line 3" in str(err.value) and "expected 3" in str(err.value)


def test_actions_list_form(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"paragraph": "Stir it.", "actions": ["STIR"]}\n{"paragraph": "Nothing.", "actions": []}\n')
    (t,) = molecular.load_actions(p)
    assert [i.outputs[0] for i in t.instances] == ["STIR.", "NOACTION."]
