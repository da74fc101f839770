#!/usr/bin/env python3
"""Generate small bundled samples for the decaNLP, BoX and molecular-text families.

Everything here is written by the project (rule-based, deterministic; no real dataset is
copied), in each source's ORIGINAL file format, so the same loaders read them as the real data:

  tasks/families/decanlp/   SQuAD v2.0 JSON, SST CSV, MultiNLI JSONL, WikiSQL JSONL + tables
  tasks/families/box/       BoX_instructions.json (4 tasks, one without instances) + <Task>.csv
  tasks/families/molecular/ ChEBI-20-style TSV, USPTO-style reaction CSV, actions JSONL
  tasks/families/*.yaml     the task declarations; tasks/mixtures/four_families.yaml mixes all

Molecules are simple ones written by hand (esters and amides from small acids, alcohols and
amines); their "CID"s are made-up numbers, not PubChem ids.

    python scripts/make_family_samples.py [--out tasks]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena", "Milo", "Nora",
         "Otto", "Pia", "Quinn", "Rosa", "Sam", "Tara"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "gray"]
ANIMALS = ["cat", "dog", "horse", "tiger", "mouse", "sheep", "goat", "zebra"]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Delhi", "Tokyo", "Quito"]
FRUITS = ["apples", "bananas", "cherries", "grapes", "lemons", "mangoes", "peaches", "pears"]
POSITIVE = ["good", "great", "lovely", "excellent", "wonderful", "fun", "moving", "charming"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "clumsy", "tedious"]
FILLER = ["the", "movie", "was", "really", "plot", "acting", "quite", "and", "story", "film"]
PLACES = ["garden", "kitchen", "park", "barn", "forest", "field"]


# --- decaNLP ----------------------------------------------------------------------------------
def squad_v2(rng: random.Random, n_paragraphs: int = 20) -> dict:
    """SQuAD v2.0 JSON: short generated paragraphs; one unanswerable question per paragraph."""
    paragraphs = []
    for i in range(n_paragraphs):
        name = NAMES[i % len(NAMES)]
        color, animal, city, fruit = rng.choice(COLORS), rng.choice(ANIMALS), rng.choice(CITIES), rng.choice(FRUITS)
        context = f"{name} is a {color} {animal} who lives in {city}. {name} likes to eat {fruit}."

        def qa(question: str, answer: str | None, k: int) -> dict:
            qid = f"fam{i:03d}{k}"
            if answer is None:
                return {"question": question, "id": qid, "answers": [], "is_impossible": True,
                        "plausible_answers": []}
            start = context.index(answer)
            return {"question": question, "id": qid, "answers": [{"text": answer, "answer_start": start}],
                    "is_impossible": False}
        qas = [qa(f"Where does {name} live?", city, 0), qa(f"What does {name} like to eat?", fruit, 1),
               qa(f"What kind of animal is {name}?", animal, 2), qa(f"How old is {name}?", None, 3)]
        paragraphs.append({"qas": qas, "context": context})
    return {"version": "v2.0", "data": [{"title": "Generated_animals", "paragraphs": paragraphs}]}


def sst_csv(rng: random.Random, n: int = 120) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "sentence"])
    for i in range(n):
        label = i % 2
        toks = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(toks)
        w.writerow([label, " ".join(toks).capitalize() + "."])
    return buf.getvalue()


def _flat_parse(sentence: str) -> tuple[str, str]:
    toks = sentence.rstrip(".").split() + ["."]
    binary = "( " + " ".join(toks) + " )"
    parse = "(ROOT (S " + " ".join(f"(X {t})" for t in toks) + "))"
    return binary, parse


def mnli_jsonl(rng: random.Random, n: int = 90) -> str:
    """MultiNLI 1.0 JSONL records (same keys as multinli_1.0_dev_matched.jsonl)."""
    lines = []
    for i in range(n):
        name, color, animal, place = rng.choice(NAMES), rng.choice(COLORS), rng.choice(ANIMALS), rng.choice(PLACES)
        premise = f"The {color} {animal} named {name} is in the {place}."
        label = ["entailment", "neutral", "contradiction"][i % 3]
        if label == "entailment":
            hypothesis = f"An {animal} is in the {place}." if animal[0] in "aeiou" else f"A {animal} is in the {place}."
        elif label == "neutral":
            hypothesis = f"The {animal} named {name} is sleeping in the {place}."
        else:
            other = rng.choice([p for p in PLACES if p != place])
            hypothesis = f"The {animal} named {name} is in the {other}, not the {place}."
        b1, p1 = _flat_parse(premise)
        b2, p2 = _flat_parse(hypothesis)
        lines.append(json.dumps({
            "annotator_labels": [label], "genre": "generated", "gold_label": label,
            "pairID": f"gen{i:04d}{label[0]}", "promptID": f"gen{i:04d}",
            "sentence1": premise, "sentence1_binary_parse": b1, "sentence1_parse": p1,
            "sentence2": hypothesis, "sentence2_binary_parse": b2, "sentence2_parse": p2}))
    return "\n".join(lines) + "\n"


def wikisql(rng: random.Random, n_tables: int = 4, per_table: int = 8) -> tuple[str, str]:
    """WikiSQL dev.jsonl + dev.tables.jsonl for small player tables."""
    tables, queries = [], []
    teams = ["Hawks", "Owls", "Bears", "Lions"]
    for t in range(n_tables):
        header = ["Player", "Team", "Points", "Year"]
        rows = [[NAMES[(t * 5 + r) % len(NAMES)], rng.choice(teams), rng.randint(1, 40), 2000 + rng.randint(0, 20)]
                for r in range(5)]
        tid = f"1-gen-{t}"
        tables.append({"id": tid, "header": header, "types": ["text", "text", "real", "real"], "rows": rows})
        for q in range(per_table):
            row = rows[q % len(rows)]
            kind = q % 4
            if kind == 0:
                question, sql = f"What team does {row[0]} play for?", {"sel": 1, "conds": [[0, 0, row[0]]], "agg": 0}
            elif kind == 1:
                question, sql = f"How many points did {row[0]} score?", {"sel": 2, "conds": [[0, 0, row[0]]], "agg": 0}
            elif kind == 2:
                question, sql = f"Which player plays for the {row[1]}?", {"sel": 0, "conds": [[1, 0, row[1]]], "agg": 0}
            else:
                question, sql = (f"What is the highest number of points for the {row[1]}?",
                                 {"sel": 2, "conds": [[1, 0, row[1]]], "agg": 1})
            queries.append({"phase": 1, "table_id": tid, "question": question, "sql": sql})
    return ("\n".join(json.dumps(q) for q in queries) + "\n", "\n".join(json.dumps(t) for t in tables) + "\n")


# --- BoX ---------------------------------------------------------------------------------------
GENES = ["BRCA1", "TP53", "EGFR", "KRAS", "MYC", "PTEN", "APOE", "CFTR", "HBB", "IL6"]
DRUGS = {"antibiotic": ["amoxicillin", "penicillin", "erythromycin", "azithromycin", "streptomycin"],
         "antiviral": ["acyclovir", "oseltamivir", "ritonavir", "zidovudine", "tenofovir"],
         "analgesic": ["ibuprofen", "paracetamol", "naproxen", "aspirin", "diclofenac"]}
SYMPTOMS = ["fever", "cough", "headache", "rash", "nausea", "fatigue"]


def box_instructions() -> dict:
    return {
        "Gene_NER": {
            "Definition:": "In this task, you are given a sentence, your task is to identify all the gene names "
                           "in it. Generate the output in this format: gene1 <Gene>, gene2 <Gene>.",
            "Examples": [
                {"input": "Mutations in BRCA1 raise the risk of cancer .", "output": "BRCA1 <Gene>",
                 "explanation": "BRCA1 is the only gene named in the input."},
                {"input": "Both TP53 and KRAS were sequenced .", "output": "TP53 <Gene>, KRAS <Gene>",
                 "explanation": "The input names two genes, TP53 and KRAS."}],
            "Prompt": "Given an input, return all the gene names with their type."},
        "Drug_Class": {
            "Definition:": "In this task, you are given a sentence that mentions a drug. Classify the drug as "
                           "antibiotic, antiviral or analgesic.",
            "Examples": [
                {"input": "The patient was given amoxicillin twice a day .", "output": "antibiotic",
                 "explanation": "Amoxicillin is a penicillin antibiotic."},
                {"input": "She took ibuprofen for the pain .", "output": "analgesic",
                 "explanation": "Ibuprofen relieves pain."}],
            "Prompt": "Given an input, return the class of the drug."},
        "Fever_YesNo": {
            "Definition:": "In this task, you are given a short clinical note. Answer yes if the note reports a "
                           "fever, otherwise answer no.",
            "Examples": [
                {"input": "Patient reports fever and cough since Monday .", "output": "yes",
                 "explanation": "The note mentions fever."},
                {"input": "Patient reports headache and rash .", "output": "no",
                 "explanation": "No fever is mentioned."}],
            "Prompt": "Given a clinical note, answer yes or no."},
        "Dosage_Extraction": {
            "Definition:": "In this task, you are given a prescription. Extract the dose of the drug.",
            "Examples": [{"input": "Take 500 mg of paracetamol every 6 hours .", "output": "500 mg",
                          "explanation": "The dose is 500 mg."}],
            "Prompt": "Given a prescription, return the dose."},
    }


def _csv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Input", "Output"])
    w.writerows(rows)
    return buf.getvalue()


def box_instances(rng: random.Random, n: int = 60) -> dict[str, str]:
    gene_rows, drug_rows, fever_rows = [], [], []
    verbs = ["was sequenced", "is expressed", "was mutated", "is silenced"]
    for i in range(n):
        genes = rng.sample(GENES, 1 + i % 2)
        gene_rows.append((f"In this sample {' and '.join(genes)} {rng.choice(verbs)} .",
                          ", ".join(f"{g} <Gene>" for g in genes)))
        cls = rng.choice(sorted(DRUGS))
        drug_rows.append((f"The patient was given {rng.choice(DRUGS[cls])} for {rng.randint(2, 10)} days .", cls))
        syms = rng.sample(SYMPTOMS, 2)
        fever_rows.append((f"Patient reports {syms[0]} and {syms[1]} .", "yes" if "fever" in syms else "no"))
    return {"Gene_NER.csv": _csv(gene_rows), "Drug_Class.csv": _csv(drug_rows), "Fever_YesNo.csv": _csv(fever_rows)}


# --- molecular -----------------------------------------------------------------------------------
ACIDS = [("formic acid", "", "formate"), ("acetic acid", "C", "acetate"), ("propanoic acid", "CC", "propanoate"),
         ("butanoic acid", "CCC", "butanoate"), ("benzoic acid", "c1ccccc1", "benzoate")]
ALCOHOLS = [("methanol", "CO", "methyl"), ("ethanol", "CCO", "ethyl"), ("propan-1-ol", "CCCO", "propyl"),
            ("propan-2-ol", "CC(C)O", "isopropyl"), ("butan-1-ol", "CCCCO", "butyl"),
            ("benzyl alcohol", "OCc1ccccc1", "benzyl")]
AMINES = [("methylamine", "CN", "N-methyl"), ("ethylamine", "CCN", "N-ethyl"), ("aniline", "Nc1ccccc1", "N-phenyl")]
# the alcohol / amine as the substituent on the carbonyl carbon
_GROUPS = {"CO": "OC", "CCO": "OCC", "CCCO": "OCCC", "CC(C)O": "OC(C)C", "CCCCO": "OCCCC",
           "OCc1ccccc1": "OCc1ccccc1", "CN": "NC", "CCN": "NCC", "Nc1ccccc1": "Nc1ccccc1"}


def acid_smiles(r: str) -> str:
    return f"O=C(O){r}" if r else "O=CO"


def condensed(r: str, partner: str) -> str:
    """Ester / amide of the acid R-COOH with an alcohol / amine."""
    group = _GROUPS[partner]
    return f"O=C({group}){r}" if r else f"O=C{group}"


def molecules() -> list[tuple[str, str, str]]:
    """(product SMILES, description, reactants SMILES) for esters and amides."""
    out = []
    for acid, r, anion in ACIDS:
        for alcohol, smi, alkyl in ALCOHOLS:
            out.append((condensed(r, smi), f"The molecule is the {alkyl} ester of {acid}, {alkyl} {anion}. "
                                           f"It derives from {acid} and {alcohol}.", f"{acid_smiles(r)}.{smi}"))
        for amine, smi, prefix in AMINES:
            out.append((condensed(r, smi), f"The molecule is the {prefix} amide of {acid}. "
                                           f"It derives from {acid} and {amine}.", f"{acid_smiles(r)}.{smi}"))
    return out


def chebi_tsv(mols: list[tuple[str, str, str]]) -> str:
    lines = ["CID\tSMILES\tdescription"]
    for i, (smi, desc, _) in enumerate(mols):
        lines.append(f"{900001 + i}\t{smi}\t{desc}")
    return "\n".join(lines) + "\n"


def reactions_csv(mols: list[tuple[str, str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "class", "reactants>reagents>production"])
    for i, (smi, _, reactants) in enumerate(mols):
        w.writerow([f"GEN{i:04d}", 2, f"{reactants}>>{smi}"])
    # two atom-mapped reactions, as USPTO writes them (maps are stripped on loading)
    w.writerow(["GEN9998", 2, "[CH3:1][C:2](=[O:3])[OH:4].[CH3:5][CH2:6][OH:7]"
                              ">>[CH3:1][C:2](=[O:3])[O:7][CH2:6][CH3:5]"])
    w.writerow(["GEN9999", 2, "[CH3:1][C:2](=[O:3])[OH:4].[CH3:5][NH2:6]>>[CH3:1][C:2](=[O:3])[NH:6][CH3:5]"])
    return buf.getvalue()


def actions_jsonl(rng: random.Random, n: int = 30) -> str:
    solvents = ["dichloromethane", "toluene", "ethanol", "water"]
    lines = []
    for i in range(n):
        acid, alcohol = rng.choice(ACIDS)[0], rng.choice(ALCOHOLS)[0]
        solvent, grams, hours = rng.choice(solvents), rng.randint(1, 9), rng.randint(1, 12)
        if i % 6 == 5:
            paragraph, actions = f"The spectra of the {acid} ester are shown in Table {i}.", "NOACTION."
        else:
            paragraph = (f"To a solution of {acid} ({grams} g) in {solvent} was added {alcohol}. "
                         f"The mixture was stirred for {hours} h.")
            actions = f"MAKESOLUTION with {acid} ({grams} g) and {solvent}; ADD {alcohol}; STIR for {hours} h."
        lines.append(json.dumps({"id": f"act{i:03d}", "paragraph": paragraph, "actions": actions}))
    return "\n".join(lines) + "\n"


# --- YAML declarations -------------------------------------------------------------------------
DECANLP_YAML = """\
# decaNLP-as-QA sample tasks (generated by scripts/make_family_samples.py; not real data).
# Each source is in its original format; the loaders turn it into (context, question, answer).
family: decanlp
encoding: qa
max_instances: 200
tasks:
  - name: decanlp_squad_sample
    source: decanlp/squad_v2_sample.json
    format: decanlp_squad
    metrics: [nf1, nem]
  - name: decanlp_sst_sample
    source: decanlp/sst_binary_sample.csv
    format: decanlp_sst
    metrics: [em]
  - name: decanlp_mnli_sample
    source: decanlp/multinli_sample.jsonl
    metrics: [em]
  - name: decanlp_wikisql_sample
    source: decanlp/wikisql/dev.jsonl
    format: decanlp_wikisql
    metrics: [lfem]
"""

BOX_YAML = """\
# BoX-style biomedical instruction tasks (generated; not real data). Instances come from
# <Task>.csv files beside the instructions; Dosage_Extraction has instructions only.
family: box
name: box
source: box/BoX_instructions.json
format: box_instructions
metrics: [box_rougeL, box_em, box_f1]
"""

MOLECULAR_YAML = """\
# Text+Chem T5 tasks on hand-written small molecules (generated; the CIDs are made up).
family: molecular
encoding: prefix
tasks:
  - name: mol
    source: molecular/chebi_sample.txt
    format: chebi20_tsv
  - name: rxn
    source: molecular/reactions_sample.csv
    format: uspto_csv
  - name: mol_actions
    source: molecular/actions_sample.jsonl
    format: actions_jsonl
"""

MIXTURE_YAML = """\
# One run over all four families: the seen SNI sample tasks plus the three family samples.
# Rates are examples-proportional with a cap and a temperature (seqio/FLAN style).
mixture: four_families
data_root: ..
sources:
  - ../sample
  - ../families/decanlp.yaml
  - ../families/box.yaml
  - ../families/molecular.yaml
rate: examples_proportional
cap: 100
temperature: 2.0
entries:
  - "task90*"
  - "task91*"
  - "decanlp_*"
  - "box_*"
  - pattern: "mol_*"
  - pattern: "rxn_*"
"""


def write_all(out: Path, seed: int = 13) -> list[Path]:
    rng = random.Random(seed)
    fam = out / "families"
    files: dict[Path, str] = {}
    files[fam / "decanlp" / "squad_v2_sample.json"] = json.dumps(squad_v2(rng), indent=1) + "\n"
    files[fam / "decanlp" / "sst_binary_sample.csv"] = sst_csv(rng)
    files[fam / "decanlp" / "multinli_sample.jsonl"] = mnli_jsonl(rng)
    dev, tables = wikisql(rng)
    files[fam / "decanlp" / "wikisql" / "dev.jsonl"] = dev
    files[fam / "decanlp" / "wikisql" / "dev.tables.jsonl"] = tables
    files[fam / "box" / "BoX_instructions.json"] = json.dumps(box_instructions(), indent=4) + "\n"
    for name, text in box_instances(rng).items():
        files[fam / "box" / name] = text
    mols = molecules()
    files[fam / "molecular" / "chebi_sample.txt"] = chebi_tsv(mols)
    files[fam / "molecular" / "reactions_sample.csv"] = reactions_csv(mols)
    files[fam / "molecular" / "actions_sample.jsonl"] = actions_jsonl(rng)
    files[fam / "decanlp.yaml"] = DECANLP_YAML
    files[fam / "box.yaml"] = BOX_YAML
    files[fam / "molecular.yaml"] = MOLECULAR_YAML
    files[out / "mixtures" / "four_families.yaml"] = MIXTURE_YAML
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tasks",
                    help="the tasks/ directory to write families/ and mixtures/ into")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    paths = write_all(args.out, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total / 1024:.1f} KB, under {args.out}")


if __name__ == "__main__":
    main()
