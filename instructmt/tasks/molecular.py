"""Molecular-text tasks of Text+Chem T5 (GT4SD/multitask_text_and_chemistry_t5, ANCHORS.md §4).

Five tasks, each input carrying its exact prefix (the `prefix` encoding adds nothing):
  forward reaction, retrosynthesis   from a USPTO CSV `id,class,reactants>reagents>production`
  text -> molecule, captioning       both from one ChEBI-20 TSV `CID<TAB>SMILES<TAB>description`
  paragraph -> actions               from JSONL records {paragraph, actions}

Reaction SMILES lose their atom-map numbers and are canonicalised with RDKit when it is
installed (without it only the map numbers are stripped). The shared ChEBI-20 sample has no
real train split: its `train_substitute_from_validation.txt` holds official *validation* rows,
so never report official-validation numbers after training on it (see its README).
"""

from __future__ import annotations

import csv
import json
import re
from functools import lru_cache
from pathlib import Path

from .textio import iter_jsonl
from ..errors import TaskFormatError
from .registry import TaskFormat
from .schema import Instance, Task

FAMILY = "molecular"
PREFIXES = {
    "forward": "Predict the product of the following reaction: ",
    "retro": "Predict the reaction that produces the following product: ",
    "actions": "Which actions are described in the following paragraph: ",
    "text2mol": "Write in SMILES the described molecule: ",
    "captioning": "Caption the following SMILES: ",
}
MOLECULE_METRICS = ["smiles_exact", "morgan_fts", "maccs_fts", "rdk_fts", "smiles_validity", "levenshtein",
                    "smiles_bleu"]
TASK_METRICS = {
    "forward": MOLECULE_METRICS,
    "retro": MOLECULE_METRICS,
    "text2mol": MOLECULE_METRICS,
    "captioning": ["text_bleu2", "text_bleu4", "text_rouge1", "text_rouge2", "text_rougeL"],
    "actions": ["chem_em", "text_bleu4"],
}
DEFINITIONS = {
    "forward": "Predict the product SMILES of a reaction given its reactants.",
    "retro": "Predict the reactant SMILES that produce a product.",
    "actions": "List the synthesis actions a paragraph describes.",
    "text2mol": "Write the SMILES of the described molecule.",
    "captioning": "Describe the molecule given as SMILES.",
}

_ATOM_MAP = re.compile(r"(\[[^\]:]+):\d+\]")


@lru_cache(maxsize=1)
def rdkit_available() -> bool:
    try:
        from rdkit import Chem, RDLogger  # noqa: F401
        RDLogger.DisableLog("rdApp.*")
        return True
    except ImportError:
        return False


def strip_atom_maps(smiles: str) -> str:
    """`[CH3:9]` -> `[CH3]` by text, for when RDKit is absent."""
    return _ATOM_MAP.sub(r"\1]", smiles)


def canonical_reaction_smiles(smiles: str) -> str:
    """Atom maps removed, then RDKit canonical SMILES (kept as text if RDKit cannot parse it)."""
    if not smiles:
        return smiles
    if not rdkit_available():
        return strip_atom_maps(smiles)
    from rdkit import Chem
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return strip_atom_maps(smiles)
    for atom in mol.GetAtoms():
        atom.SetAtomMapNum(0)
    # one more parse/write round: right after clearing maps RDKit's output is not yet a fixed
    # point (ring stereo can be written differently), and canonical SMILES must be one
    smiles = Chem.MolToSmiles(mol)
    again = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(again) if again is not None else smiles


def unparseable_smiles_note(found: list[tuple[int, str]], what: str) -> list[str]:
    """A note (shown by `instructmt tasks validate`) for SMILES RDKit cannot parse. They are kept,
    not rejected: real releases hold a few, and the molecule metrics score such a reference as
    unparseable rather than failing the whole file."""
    if not found:
        return []
    line, smiles = found[0]
    return [f"{len(found)} {what} RDKit cannot parse, kept as text (first: line {line} {smiles[:60]!r})"]


def _rdkit_rejects(smiles: str) -> bool:
    if not smiles or not rdkit_available():
        return False
    from rdkit import Chem
    return Chem.MolFromSmiles(smiles) is None


def prefixed(kind: str, text: str) -> str:
    return PREFIXES[kind] + text


def _instance(kind: str, iid: str, text: str, target: str) -> Instance:
    return Instance(id=iid, input=prefixed(kind, text), outputs=[target],
                    fields={"text": text, "prefix": PREFIXES[kind]})


def _task(kind: str, name: str, instances: list[Instance], path: Path, **extra) -> Task:
    if not instances:
        raise TaskFormatError("holds no examples", path=str(path), task=name)
    return Task(name=name, family=FAMILY, definition=DEFINITIONS[kind], instances=instances,
                metrics=list(TASK_METRICS[kind]), encoding="prefix", source=str(path),
                categories=[kind], extra={"molecular_task": kind, **extra})


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path.stem).strip("_")


def _open(path: Path):
    try:
        return path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(path)) from None


# --- ChEBI-20 ----------------------------------------------------------------------------
def load_chebi20(path: str | Path) -> list[Task]:
    """Two tasks from one ChEBI-20 file: captioning (SMILES -> text) and text -> molecule."""
    p = Path(path)
    with _open(p) as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or [c.strip() for c in rows[0][:3]] != ["CID", "SMILES", "description"]:
        raise TaskFormatError("expected the header 'CID<TAB>SMILES<TAB>description'", path=str(p), line=1)
    caps, t2m = [], []
    unparseable: list[tuple[int, str]] = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 3:
            raise TaskFormatError(f"expected 3 tab-separated fields, got {len(row)}", path=str(p), line=n)
        cid, smiles, desc = (c.strip() for c in row)
        if not smiles or not desc:
            raise TaskFormatError("empty SMILES or description", path=str(p), line=n, field="SMILES" if not smiles
                                  else "description")
        if _rdkit_rejects(smiles):
            unparseable.append((n, smiles))
        caps.append(_instance("captioning", f"chebi-{cid}-cap", smiles, desc))
        t2m.append(_instance("text2mol", f"chebi-{cid}-mol", desc, smiles))
    slug = _slug(p)
    notes = unparseable_smiles_note(unparseable, "SMILES")
    return [_task("captioning", f"chebi20_captioning_{slug}", caps, p, **({"notes": notes} if notes else {})),
            _task("text2mol", f"chebi20_text2mol_{slug}", t2m, p, **({"notes": notes} if notes else {}))]


def _first_line(path: Path) -> str:
    with path.open("rb") as fh:
        return fh.read(512).decode("utf-8", errors="replace").split("\n", 1)[0].strip()


def _is_chebi20(path: Path) -> bool:
    return path.suffix in (".txt", ".tsv") and _first_line(path).split("\t")[:3] == ["CID", "SMILES", "description"]


# --- USPTO reactions -------------------------------------------------------------------------
_REACTION_COLUMNS = ("reactants>reagents>production", "rxn_smiles", "reaction", "reactions")


def split_reaction(rxn: str) -> tuple[str, str, str]:
    """`reactants>reagents>product` (reagents may be empty, as in `A.B>>C`)."""
    parts = rxn.strip().split(">")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ValueError(f"not a reaction SMILES 'reactants>reagents>product': {rxn[:60]!r}")
    return parts[0], parts[1], parts[2]


def load_reactions(path: str | Path) -> list[Task]:
    """Forward prediction and retrosynthesis from a USPTO(-50k) CSV. Reagents (rare in USPTO-50k)
    join the reactants with '.' on the forward side."""
    p = Path(path)
    with _open(p) as fh:
        reader = csv.DictReader(fh)
        col = next((c for c in _REACTION_COLUMNS if c in (reader.fieldnames or [])), None)
        if col is None:
            raise TaskFormatError(f"no reaction column (one of: {', '.join(_REACTION_COLUMNS)})", path=str(p), line=1)
        rows = list(reader)
    fwd, retro = [], []
    unparseable: list[tuple[int, str]] = []
    for n, row in enumerate(rows, start=2):
        try:
            reactants, reagents, product = split_reaction(row[col] or "")
        except ValueError as e:
            raise TaskFormatError(str(e), path=str(p), line=n, field=col) from None
        bad = next((s for s in (reactants, reagents, product) if _rdkit_rejects(s)), None)
        if bad is not None:
            unparseable.append((n, bad))
        r = canonical_reaction_smiles(reactants)
        g = canonical_reaction_smiles(reagents) if reagents else ""
        prod = canonical_reaction_smiles(product)
        rid = row.get("id") or str(n - 1)
        fwd.append(_instance("forward", f"{rid}-fwd-{n}", r + ("." + g if g else ""), prod))
        retro.append(_instance("retro", f"{rid}-retro-{n}", prod, r))
    slug = _slug(p)
    extra = {"canonicalised": rdkit_available()}
    notes = unparseable_smiles_note(unparseable, "reactions hold SMILES")
    if notes:
        extra["notes"] = notes
    return [_task("forward", f"uspto_forward_{slug}", fwd, p, **extra),
            _task("retro", f"uspto_retro_{slug}", retro, p, **extra)]


def _is_reactions(path: Path) -> bool:
    if path.suffix != ".csv":
        return False
    header = _first_line(path).split(",")
    return any(c in header for c in _REACTION_COLUMNS)


# --- paragraph -> actions -------------------------------------------------------------------
def load_actions(path: str | Path) -> list[Task]:
    """JSONL records {"paragraph": text, "actions": "ADD ...; STIR ..."} (also text/input and
    target/output); an empty action list is 'NOACTION.'."""
    p = Path(path)
    out = []
    for n, rec in iter_jsonl(p):
        text = next((rec[k] for k in ("paragraph", "text", "input") if k in rec), None)
        actions = next((rec[k] for k in ("actions", "target", "output") if k in rec), None)
        if not isinstance(text, str) or actions is None:
            raise TaskFormatError("needs 'paragraph' and 'actions'", path=str(p), line=n)
        if isinstance(actions, list):
            actions = "; ".join(actions) + ("." if actions else "")
        out.append(_instance("actions", str(rec.get("id", f"actions-{n}")), text, actions or "NOACTION."))
    return [_task("actions", f"paragraph2actions_{_slug(p)}", out, p)]


def _is_actions(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    try:
        with path.open(encoding="utf-8") as fh:
            rec = json.loads(fh.readline())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(rec, dict) and "paragraph" in rec and "actions" in rec


CHEBI20_FORMAT = TaskFormat("chebi20_tsv", FAMILY, _is_chebi20, load_chebi20,
                            "ChEBI-20 TSV CID/SMILES/description (captioning + text->molecule)")
USPTO_FORMAT = TaskFormat("uspto_csv", FAMILY, _is_reactions, load_reactions,
                          "USPTO CSV with reactants>reagents>production (forward + retrosynthesis)")
ACTIONS_FORMAT = TaskFormat("actions_jsonl", FAMILY, _is_actions, load_actions, "paragraph -> actions JSONL")
