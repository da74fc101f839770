"""Writes the round-two hostile task files into tests/data/bad/ (issue 19): duplicate JSON keys,
pathological nesting, lone surrogates, other encodings, empty references, mixture numbers that are
NaN / inf / overflow / all zero, alias bombs. Run once; the files are committed."""

from __future__ import annotations

import json
from pathlib import Path

BAD = Path(__file__).resolve().parents[1] / "tests" / "data" / "bad"


def task(name: str, **over) -> dict:
    d = {"Definition": ["Copy the last word."], "Categories": ["Program Execution"],
         "Positive Examples": [{"input": "a b", "output": "b", "explanation": "last"}],
         "Negative Examples": [],
         "Instances": [{"id": f"{name}-0", "input": "a b", "output": ["b"]},
                       {"id": f"{name}-1", "input": "c d", "output": ["d"]}]}
    d.update(over)
    return d


def write(name: str, text: str | bytes) -> None:
    p = BAD / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")


def dumps(d) -> str:
    return json.dumps(d, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    # --- duplicate keys: the second would silently replace the first
    t = dumps(task("task021"))
    write("task021_duplicate_instances_key.json",
          t.rstrip().rstrip("}") + ',\n "Instances": [{"id": "z", "input": "q", "output": ["q"]}]\n}\n')
    write("task022_duplicate_output_key_in_instance.json", dumps(task("task022")).replace(
        '"output": [\n    "b"\n   ]', '"output": ["b"], "output": ["not b"]', 1))
    write("task023_duplicate_definition_key.json",
          '{"Definition": ["one"], "Definition": ["two"], "Instances": [{"id": "a", "input": "x", "output": ["y"]}]}\n')
    # --- pathological nesting
    write("task024_deep_nesting.json", '{"Definition": ' + "[" * 200000 + "]" * 200000 + ', "Instances": []}\n')
    nested = "[" * 500 + '"x"' + "]" * 500
    write("task025_input_nested_500_deep.json", dumps(task("task025")).replace('"input": "a b"', f'"input": {nested}', 1)
          .replace('"input": "a b"', '"input": "a b"'))
    # --- lone surrogates (valid JSON, invalid text: training crashed at tokenization)
    write("task026_lone_surrogate_input.json", dumps(task("task026")).replace('"input": "c d"', '"input": "c \\ud800 d"'))
    write("task027_lone_surrogate_definition.json", dumps(task("task027", Definition=["Copy XX"])).replace("XX", "\\udfff"))
    write("task028_lone_surrogate_output.json", dumps(task("task028")).replace('"d"\n', '"d\\udc00"\n'))
    write("task029_lone_surrogate_example.json", dumps(task("task029")).replace('"explanation": "last"',
                                                                              '"explanation": "\\ud83d"'))
    # --- empty references
    insts = [{"id": "e-0", "input": "a b", "output": [""]}, {"id": "e-1", "input": "c d", "output": [""]}]
    write("task030_all_empty_outputs.json", dumps(task("task030", Instances=insts)))
    insts = [{"id": "w-0", "input": "a b", "output": ["b"]}, {"id": "w-1", "input": "c d", "output": ["  ", "\n"]}]
    write("task031_whitespace_only_outputs.json", dumps(task("task031", Instances=insts)))
    write("task032_empty_string_output.json", dumps(task("task032", Instances=[
        {"id": "s-0", "input": "a", "output": ""}])))
    # --- other encodings
    write("task033_utf16_with_bom.json", dumps(task("task033")).encode("utf-16"))
    write("task034_cp1252.json", dumps(task("task034", Definition=["Copy the last word \u2014 exactly."])).encode("cp1252"))
    write("task035_utf8_bom.json", b"\xef\xbb\xbf" + dumps(task("task035")).encode("utf-8"))
    d = BAD / "directory_with_utf16_task"
    d.mkdir(exist_ok=True)
    (d / "task036_fine.json").write_text(dumps(task("task036")), encoding="utf-8")
    (d / "task037_utf16.json").write_bytes(dumps(task("task037")).encode("utf-16"))
    # --- odd JSON values
    write("task038_nan_input.json", dumps(task("task038")).replace('"input": "a b"', '"input": NaN', 1))
    write("task039_huge_number_id.json", dumps(task("task039")).replace('"id": "task039-0"', '"id": 1e400', 1))
    write("task040_output_nested_list.json", dumps(task("task040")).replace('"output": [\n    "b"\n   ]',
                                                                           '"output": [["b"]]', 1))
    # --- flat records (JSONL)
    write("records_duplicate_key.jsonl", '{"task": "recs_f", "input": "a", "output": "b"}\n'
          '{"task": "recs_f", "input": "c", "output": "d", "output": "e"}\n')
    write("records_lone_surrogate.jsonl", '{"task": "recs_g", "input": "a\\ud800", "output": "b"}\n')
    write("records_deep_nesting.jsonl", '{"task": "recs_h", "input": ' + "[" * 100000 + "]" * 100000 + "}\n")
    write("records_all_empty_output.jsonl", '{"task": "recs_i", "input": "a", "output": ""}\n'
          '{"task": "recs_i", "input": "b", "output": " "}\n')
    write("records_utf16.jsonl", '{"task": "recs_j", "input": "a", "output": "b"}\n'.encode("utf-16"))
    # --- other families
    write("nli_lone_surrogate.jsonl", '{"sentence1": "A man runs.", "sentence2": "A person \\udc80 moves.", '
          '"gold_label": "entailment"}\n')
    write("nli_duplicate_key.jsonl", '{"sentence1": "A man runs.", "sentence2": "x", "sentence2": "A person moves.", '
          '"gold_label": "entailment"}\n')
    write("actions_duplicate_key.jsonl", '{"paragraph": "Stir.", "actions": "STIR.", "actions": "HEAT."}\n')
    write("chebi_utf16.txt", "CID\tSMILES\tdescription\n1\tCCO\tThe molecule is ethanol.\n".encode("utf-16"))
    # --- mixtures: numbers
    src = "sources: [../../../tasks/sample]\ndata_root: ../../..\n"
    write("mixture_rate_nan.yaml", f"mixture: m\n{src}entries:\n  - {{pattern: 'task90*', rate: .nan}}\n")
    write("mixture_rate_inf.yaml", f"mixture: m\n{src}entries:\n  - {{pattern: 'task90*', rate: .inf}}\n")
    write("mixture_rate_overflow.yaml", f"mixture: m\n{src}entries:\n  - {{pattern: 'task90*', rate: {'9' * 400}}}\n")
    write("mixture_all_rates_zero.yaml", f"mixture: m\n{src}entries:\n  - {{pattern: 'task90*', rate: 0}}\n"
          "  - {pattern: 'task91*', rate: 0.0}\n")
    write("mixture_default_rate_zero.yaml", f"mixture: m\n{src}rate: 0\nentries: ['task90*', 'task91*']\n")
    write("mixture_temperature_tiny.yaml", f"mixture: m\n{src}temperature: 1.0e-300\nentries: ['task90*']\n")
    write("mixture_temperature_nan.yaml", f"mixture: m\n{src}temperature: .nan\nentries: ['task90*']\n")
    write("mixture_temperature_inf.yaml", f"mixture: m\n{src}temperature: .inf\nentries: ['task90*']\n")
    write("mixture_cap_huge.yaml", f"mixture: m\n{src}cap: {'9' * 30}\nentries: ['task90*']\n")
    # --- YAML safety
    bomb = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    write("mixture_alias_bomb.yaml", "mixture: m\na: &a [x, x, x, x, x, x, x, x, x]\n" + bomb + "entries: ['*']\n")
    write("yaml_alias_bomb.yaml", "family: natural_instructions\nname: bomb\nsource: x.json\n"
          "a: &a [x, x, x, x, x, x, x, x, x]\n" + bomb)
    write("yaml_huge_max_instances.yaml", "family: natural_instructions\nname: huge\n"
          "source: task002_missing_definition.json\nmax_instances: " + "9" * 40 + "\n")
    write("yaml_negative_max_instances.yaml", "family: natural_instructions\nname: negative\n"
          "source: task002_missing_definition.json\nmax_instances: -5\n")
    write("yaml_lone_surrogate.yaml", 'family: natural_instructions\nname: surrogate\n'
          'definition: "Copy \\ud800 the word."\nsource: task002_missing_definition.json\n')
    write("yaml_duplicate_key.yaml", "family: natural_instructions\nname: dup\nfamily: box\n"
          "source: task002_missing_definition.json\n")


if __name__ == "__main__":
    main()
