import pytest

from instructmt.data.batching import length_grouped_batches
from instructmt.data.collator import IGNORE_INDEX, CausalCollator, Seq2SeqCollator
from instructmt.data.mixture import Mixture, check_split, mixing_rates, split_instances
from instructmt.errors import SplitOverlapError
from instructmt.tasks.schema import Instance, Task


def _task(name, n):
    return Task(name=name, family="x", definition="d", instances=[Instance(f"{name}-{i}", str(i), ["o"]) for i in range(n)])


def test_examples_proportional_with_cap_and_temperature():
    assert mixing_rates([100, 10], cap=None) == pytest.approx([100 / 110, 10 / 110])
    assert mixing_rates([100, 10], cap=10) == pytest.approx([0.5, 0.5])
    r = mixing_rates([100, 25], temperature=2.0)  # sqrt: 10 vs 5
    assert r == pytest.approx([2 / 3, 1 / 3])


def test_epoch_is_seeded_resampled_and_capped():
    capped = Mixture.from_tasks([_task("a", 50), _task("b", 5)], max_instances=40, cap=20, seed=3)
    assert capped.counts() == {"a": 20, "b": 5}
    # temperature 2 up-weights the small task: sqrt(20) : sqrt(5) = 2 : 1 of 25 examples
    m = Mixture.from_tasks([_task("a", 50), _task("b", 5)], max_instances=40, cap=20, temperature=2.0, seed=3)
    assert m.counts() == {"a": 17, "b": 8}
    e0, e0_again, e1 = m.epoch(0), m.epoch(0), m.epoch(1)
    assert e0 == e0_again and e0 != e1
    assert len(e0) == m.epoch_size() == 25
    assert max(i for n, i in e0 if n == "a") < 40  # max_instances applied
    b = [i for n, i in e0 if n == "b"]
    assert sorted(set(b)) == list(range(5))  # up-weighted small task: every instance before repeats


def test_holdback_instances_never_trained():
    t = _task("a", 10)
    train, held = split_instances(t, max_instances=100, holdback=3)
    assert [i.id for i in held] == ["a-7", "a-8", "a-9"]
    assert not {i.id for i in train} & {i.id for i in held}


def test_overlap_between_seen_and_held_out_is_an_error():
    with pytest.raises(SplitOverlapError, match="task_b"):
        check_split(["task_a", "task_b"], ["task_b", "task_c"])


def test_length_grouping_cuts_padding():
    import random
    rng = random.Random(0)
    lengths = [rng.randint(5, 400) for _ in range(2000)]
    def pad_frac(batches):
        real = sum(lengths[i] for b in batches for i in b)
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - real / padded
    grouped = length_grouped_batches(lengths, 16, seed=1, epoch=0)
    plain = length_grouped_batches(lengths, 16, seed=1, epoch=0, group_by_length=False)
    assert sorted(i for b in grouped for i in b) == list(range(2000))
    assert pad_frac(grouped) < 0.1 < pad_frac(plain)


def test_seq2seq_collator_labels_and_task_ids():
    c = Seq2SeqCollator(pad_token_id=0, task_names=["t0", "t1"])
    b = c([{"source_ids": [5, 6, 1], "labels": [7, 1], "task": "t1"},
           {"source_ids": [5, 1], "labels": [8, 9, 1], "task": "t0"}])
    assert b["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[7, 1, IGNORE_INDEX], [8, 9, 1]]
    assert b["task_ids"].tolist() == [1, 0]


def test_causal_collator_masks_the_prompt():
    c = CausalCollator(pad_token_id=0)
    b = c([{"source_ids": [5, 6], "labels": [7, 1], "task": "t"}, {"source_ids": [5], "labels": [8, 1], "task": "t"}])
    assert b["input_ids"].tolist() == [[5, 6, 7, 1], [5, 8, 1, 0]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 1], [IGNORE_INDEX, 8, 1, IGNORE_INDEX]]
    assert "task_ids" not in b


def test_four_family_mixture_yaml_resolves_seen_held_out_and_rates(repo):
    from instructmt.config import DataConfig
    from instructmt.training.task_setup import resolve_tasks
    split = resolve_tasks(DataConfig(tasks=[str(repo / "tasks" / "mixtures" / "four_families.yaml")]))
    assert {t.family for t in split.seen} == {"natural_instructions", "decanlp", "box", "molecular"}
    assert {t.name for t in split.held_out} == set((repo / "tasks" / "sample" / "splits" / "test_tasks.txt").read_text().split())
    assert split.rates and abs(sum(split.rates.values()) - 1) < 1e-9
    m = Mixture.from_tasks(split.seen, rates=split.rates)
    counts = m.counts()
    assert sum(counts.values()) == m.epoch_size() and min(counts.values()) > 0
