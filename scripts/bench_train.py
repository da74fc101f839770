"""Training throughput: our trainer against `transformers.Seq2SeqTrainer` + peft, side by side.

    python scripts/bench_train.py --quick        # CPU, tiny T5: ~70 s on a lightly loaded 2-core CPU
    python scripts/bench_train.py                                      # CPU, longer runs, 3 repeats
    python scripts/bench_train.py --device cuda --shape llama-1b       # GPU: Llama-1B shape, bf16, MFU
    python scripts/bench_train.py --quick --model smollm2-135m         # the real model vs the strongest peers

With `--model smollm2-135m` (SmolLM2-135M-Instruct, fp32, LoRA r=8 on q_proj/v_proj) the systems are
  (a) hf_grouped: `transformers.Trainer` + peft with `train_sampling_strategy="group_by_length"` (what `group_by_length=True` was; DataCollatorForSeq2Seq,
      right padding, prompt tokens masked out of the loss, constant learning rate);
  (b) trl: TRL's `SFTTrainer` on the same pre-tokenized rows (labels = the prompt-masked completion),
      `padding_free=True` (exact on CPU: TRL runs with use_cache=False, so transformers builds a
      block-diagonal mask from the restarting position ids; tests/test_packing.py checks that mask),
      gradient checkpointing off (TRL's default is on; speed is what this compares), its default
      fused LM head (chunked log-probs over every position);
  (c) ours: `train(TrainConfig)` with its defaults (packed rows, per-example attention, loss on the
      target positions only);
each running two epochs over the same examples (`--timed-epoch`: 1 instance of each of the SNI
sample's 48 training tasks with --quick, 3 otherwise) and timed over the second epoch only, so every
system's timed window trains exactly the same examples (in its own batches and order);
and the last line is `real_tok_ratio_vs_hf_grouped=<x> real_tok_ratio_vs_trl=<y> mem_ratio=<z>`, z =
our peak RSS / the lower of the two baselines' peaks. All three see the same examples (the same
Mixture and tokenization), batch size, learning rate, optimizer (AdamW) and gradient clipping; each
prints its loss for every step so the curves can be compared.

Same model (random init, saved once and loaded by both), same data (the real SNI sample under
/work/shared/data/sni when present, else the bundled tasks/sample + tasks/families), same LoRA
config, batch size and number of steps, through

  (a) baseline: `Seq2SeqTrainer` + `peft.get_peft_model`, default settings: its
      `DataCollatorForSeq2Seq` (pads each random batch to its longest row), random sampling, default
      optimizer; only output_dir, batch size, max_steps, learning rate, seed (and bf16 on CUDA) set;
  (b) ours: `instructmt.training.trainer.train(TrainConfig(...))`, unchanged (length-grouped batches).

Each configuration runs in its own fresh subprocess (so peak memory is that run's), interleaved
A,B then B,A, ... (with --quick / --concurrent each pair runs at the same time, so both see the same
machine load); the medians are reported. By default each run is one epoch, so both systems train on
the same examples (and both meet the widest batch). Timed: from the end of optimizer step `--warmup` to the end
of the last step (a global optimizer step hook; CUDA synchronised there), counting the REAL
(non-padding) tokens of the batches trained in that window (source + target for seq2seq; the whole
sequence for causal). On CPU the headline rate uses the process's CPU time (torch on one thread):
wall time on a CPU shared with other jobs mostly measures the other jobs; wall-time rates are
printed beside it.

Memory: CPU, the child's peak RSS (`ru_maxrss`, the whole process) and the peak RSS during training
(VmHWM reset at the first batch via /proc/self/clear_refs); CUDA, `torch.cuda.max_memory_allocated`.

GPU (`--shape llama-1b`): also times a large bf16 matmul in the same run and reports MFU of each
system = (real tokens/s x model FLOPs per token) / measured matmul peak, where a LoRA step costs a
forward and an input-gradient backward: 4 x (matmul parameters) + 8 x layers x hidden x mean length
FLOPs per token (frozen weights get no weight gradient).

The last line printed is exactly `real_tok_ratio=<ours/baseline> mem_ratio=<ours/baseline>`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNI_DIR = REPO.parent / "shared" / "data" / "sni"
SYSTEMS = ("baseline", "ours")
PEER_SYSTEMS = ("hf_grouped", "trl", "ours")  # --model: the real model against the strongest peers


def systems(args) -> tuple[str, ...]:
    return PEER_SYSTEMS if args.model else SYSTEMS


# --------------------------------------------------------------------------- data and model setup

def data_sources() -> tuple[list[str], str | None, str]:
    """(task sources, split dir, description): the real SNI sample if present, else bundled tasks."""
    if (SNI_DIR / "tasks").is_dir():
        return [str(SNI_DIR / "tasks")], str(SNI_DIR / "splits"), "SNI sample (/work/shared/data/sni, 48 train tasks)"
    return ([str(REPO / "tasks" / "sample"), str(REPO / "tasks" / "families")], None,
            "bundled tasks/sample + tasks/families")


def data_config(args):
    from instructmt.config import DataConfig
    tasks, split_dir, _ = data_sources()
    return DataConfig(tasks=tasks, split_dir=split_dir, encoding=args.encoding,
                      max_instances_per_task=args.max_instances, max_source_length=args.max_source_length,
                      max_target_length=args.max_target_length)


def llama_1b_config(vocab_size: int):
    from transformers import LlamaConfig
    # Llama-3.2-1B's shape (16 layers, hidden 2048, GQA 32/8 heads, tied 128k vocab)
    return LlamaConfig(vocab_size=max(vocab_size, 128256), hidden_size=2048, intermediate_size=8192,
                       num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True)


def build_model_dir(args, out: Path) -> None:
    """Random-init model + locally trained tokenizer, saved once so both systems load the same."""
    import torch
    from instructmt.models.loading import prepare_tokenizer
    from instructmt.models.tiny import build_tiny, build_tokenizer
    from instructmt.training.task_setup import resolve_tasks, tokenizer_corpus

    split = resolve_tasks(data_config(args))
    texts = tokenizer_corpus(split)
    if args.shape == "pretrained":  # --model: nothing to build
        return
    if args.shape == "tiny-t5":
        model, tok = build_tiny("seq2seq", texts, vocab_size=args.vocab_size, d_model=args.d_model,
                                layers=args.layers, seed=args.seed)
        kind = "seq2seq"
    elif args.shape == "llama-tiny":  # CPU smoke test of the causal / GPU path
        model, tok = build_tiny("causal", texts, vocab_size=args.vocab_size, d_model=args.d_model,
                                layers=args.layers, seed=args.seed)
        kind = "causal"
    elif args.shape == "llama-1b":
        from transformers import LlamaForCausalLM
        tok = build_tokenizer(texts, vocab_size=args.vocab_size, seed=args.seed)
        cfg = llama_1b_config(len(tok))
        cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.eos_token_id
        torch.manual_seed(args.seed)
        with torch.device(args.device):
            model = LlamaForCausalLM(cfg)
        model = model.to(torch.bfloat16)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        kind = "causal"
    else:
        raise SystemExit(f"unknown --shape {args.shape}")
    prepare_tokenizer(tok, kind)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the children need the GPU


def training_rows(args, model_dir: Path, cache: Path):
    """Exactly the (task, instance) pairs and encodings our trainer uses (same Mixture, same cache)."""
    from instructmt.data.mixture import Mixture
    from instructmt.data.tokenize import EncodeSpec, tokenize_pairs
    from instructmt.training.task_setup import resolve_tasks

    data = data_config(args)
    split = resolve_tasks(data)
    tok, kind = _load_tok(model_dir)
    mixture = Mixture.from_tasks(split.seen, max_instances=data.max_instances_per_task,
                                 holdback=data.holdback_per_seen_task, cap=data.mixing_cap,
                                 temperature=data.temperature, seed=args.seed, rates=split.rates)
    by_name = {t.name: t for t in split.seen}
    pairs = [(by_name[n], inst) for n, insts in mixture.instances.items() for inst in insts]
    spec = EncodeSpec(kind, data.encoding, data.max_source_length, data.max_target_length, False)
    return tokenize_pairs(pairs, tok, spec, cache_dir=cache), tok, kind


def _load_tok(model_dir: Path):
    from transformers import AutoConfig, AutoTokenizer
    from instructmt.models.loading import model_kind, prepare_tokenizer
    kind = model_kind(AutoConfig.from_pretrained(str(model_dir)))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prepare_tokenizer(tok, kind)
    return tok, kind


# --------------------------------------------------------------------------- measurement (child side)

def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Meter:
    """Counts real / padded tokens per batch and timestamps every optimizer step."""

    def __init__(self, kind: str, device: str, warmup: int, steps: int):
        self.kind, self.device, self.warmup, self.steps = kind, device, warmup, steps
        self.batches: list[tuple[int, int]] = []  # (real, padded) per collated batch, in order
        self.step_times: list[tuple[float, float]] = []  # (wall, cpu) at the end of each step
        self.train_peak_reset = False
        self.rss_at_first_batch_mb = None

    def wrap_collator(self, collate):
        def counted(rows):
            if not self.train_peak_reset:
                self._reset_peak()
            batch = collate(rows)
            if "attention_mask" in batch:
                mask = batch["attention_mask"]
                real, padded = int(mask.sum()), mask.numel()
            else:  # padding-free rows (ours packed, TRL padding_free): every position is real
                real = padded = int(batch["input_ids"].numel())
            if self.kind == "seq2seq":
                labels = batch["labels"]
                real += int((labels != -100).sum())
                padded += labels.numel()
            self.batches.append((real, padded))
            return batch
        return counted

    def _reset_peak(self):
        self.train_peak_reset = True
        self.rss_at_first_batch_mb = _status_mb("VmRSS")
        if self.device == "cuda":
            import torch
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def on_step(self, *_a, **_k):
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
        self.step_times.append((time.perf_counter(), time.process_time()))

    def result(self) -> dict:
        n = min(self.steps, len(self.step_times))
        if n <= self.warmup:
            raise RuntimeError(f"only {n} steps recorded; need more than --warmup={self.warmup}")
        (w0, c0), (w1, c1) = self.step_times[self.warmup - 1], self.step_times[n - 1]
        window = self.batches[self.warmup:n]  # grad_accum = 1: batch k is trained by step k
        real = sum(r for r, _ in window)
        padded = sum(p for _, p in window)
        out = {"steps_timed": n - self.warmup, "real_tokens": real, "padded_tokens": padded,
               "padding_frac": 1 - real / padded, "wall_s": w1 - w0, "cpu_s": c1 - c0,
               "real_tok_s_wall": real / (w1 - w0), "real_tok_s_cpu": real / max(c1 - c0, 1e-9),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if self.device == "cuda":
            import torch
            out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            out["train_peak_rss_mb"] = _status_mb("VmHWM")
            out["rss_at_first_batch_mb"] = self.rss_at_first_batch_mb
            out["peak_mem_mb"] = out["peak_rss_mb"]
        return out


def child_ours(args, model_dir: Path, workdir: Path, meter: Meter) -> None:
    from instructmt.adapters.base import AdapterConfig
    from instructmt.config import ModelConfig, TrainConfig
    from instructmt.training import trainer

    real_make = trainer.make_collator
    trainer.make_collator = lambda *a, **k: meter.wrap_collator(real_make(*a, **k))
    cfg = TrainConfig(output_dir=str(workdir / "runs" / f"ours-{os.getpid()}"),
                      model=ModelConfig(name_or_path=str(model_dir)), data=data_config(args),
                      adapter=AdapterConfig(method="lora", r=args.lora_r, alpha=2 * args.lora_r),
                      seed=args.seed, max_steps=args.steps, batch_size=args.batch_size,
                      learning_rate=args.lr, log_every=args.steps, save_every=0,
                      mixed_precision="bf16" if args.device == "cuda" else "no")
    res = trainer.train(cfg)
    meter.losses = list(res.losses)


def _prompt_masked_rows(args, model_dir: Path, workdir: Path):
    """(rows with input_ids / labels, tokenizer): the examples our trainer trains on, each with one
    reference target picked as ours picks it, the prompt masked out of the loss."""
    import random

    import datasets

    data, tok, kind = training_rows(args, model_dir, Path(os.environ["INSTRUCTMT_CACHE"]))
    rng = random.Random(f"{args.seed}-targets")
    cols = {"input_ids": [], "labels": []}
    for src, tgts in zip(data["source_ids"], data["target_ids"]):
        tgt = list(tgts[rng.randrange(len(tgts))])
        cols["input_ids"].append(list(src) + tgt)
        cols["labels"].append([-100] * len(src) + tgt)
    return datasets.Dataset.from_dict(cols), tok


def _peer_model(args, model_dir: Path):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.lora_r, lora_alpha=2 * args.lora_r,
                                            lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))


def _losses(log_history) -> list[float]:
    return [float(r["loss"]) for r in log_history if "loss" in r]


def child_hf_grouped(args, model_dir: Path, workdir: Path, meter: Meter) -> None:
    """transformers.Trainer + peft, group_by_length=True: the strongest plain-HF setting."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    train_ds, tok = _prompt_masked_rows(args, model_dir, workdir)
    tok.padding_side = "right"  # training pads on the right (left padding would shift positions)
    model = _peer_model(args, model_dir)
    targs = TrainingArguments(output_dir=str(workdir / "runs" / f"hfg-{os.getpid()}"),
                              per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                              learning_rate=args.lr, lr_scheduler_type="constant", seed=args.seed,
                              train_sampling_strategy="group_by_length", logging_steps=1, report_to="none",
                              save_strategy="no",
                              use_cpu=args.device == "cpu", bf16=args.device == "cuda", disable_tqdm=True)
    collate = meter.wrap_collator(DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100))
    t = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collate, processing_class=tok)
    t.train()
    meter.losses = _losses(t.state.log_history)


def child_trl(args, model_dir: Path, workdir: Path, meter: Meter) -> None:
    """TRL SFTTrainer, prompt-masked loss, padding-free rows (or --trl-mode packing / padded)."""
    from trl import SFTConfig, SFTTrainer

    train_ds, tok = _prompt_masked_rows(args, model_dir, workdir)
    tok.padding_side = "right"
    model = _peer_model(args, model_dir)
    mode = args.trl_mode
    cfg = SFTConfig(output_dir=str(workdir / "runs" / f"trl-{os.getpid()}"),
                    per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                    learning_rate=args.lr, lr_scheduler_type="constant", seed=args.seed,
                    logging_steps=1, report_to="none", save_strategy="no", gradient_checkpointing=False,
                    padding_free=mode in ("padding_free", "packing"), packing=mode == "packing",
                    train_sampling_strategy="group_by_length" if mode == "padded" else "random",
                    # rows are already truncated; TRL refuses a max_length it would not enforce
                    max_length=args.max_source_length + args.max_target_length if mode != "padding_free" else None,
                    use_cpu=args.device == "cpu", bf16=args.device == "cuda", disable_tqdm=True,
                    dataset_num_proc=None)
    t = SFTTrainer(model=model, args=cfg, train_dataset=train_ds, processing_class=tok)
    t.data_collator = meter.wrap_collator(t.data_collator)
    t.train()
    meter.losses = _losses(t.state.log_history)


def child_baseline(args, model_dir: Path, workdir: Path, meter: Meter) -> None:
    import random

    import datasets
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq,
                              Seq2SeqTrainer, Seq2SeqTrainingArguments)

    data, tok, kind = training_rows(args, model_dir, Path(os.environ["INSTRUCTMT_CACHE"]))
    cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    model = cls.from_pretrained(str(model_dir))
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM,
        r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0))
    rng = random.Random(f"{args.seed}-targets")
    cols = {"input_ids": [], "attention_mask": [], "labels": []}
    for src, tgts in zip(data["source_ids"], data["target_ids"]):
        tgt = tgts[rng.randrange(len(tgts))]
        if kind == "seq2seq":
            ids, labels = list(src), list(tgt)
        else:  # prompt tokens masked out of the loss, like our causal collator
            ids, labels = list(src) + list(tgt), [-100] * len(src) + list(tgt)
        cols["input_ids"].append(ids)
        cols["attention_mask"].append([1] * len(ids))
        cols["labels"].append(labels)
    train_ds = datasets.Dataset.from_dict(cols)
    targs = Seq2SeqTrainingArguments(output_dir=str(workdir / "runs" / f"hf-{os.getpid()}"),
                                     per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                                     learning_rate=args.lr, seed=args.seed,
                                     bf16=args.device == "cuda")
    collate = meter.wrap_collator(DataCollatorForSeq2Seq(tok, model=model))
    Seq2SeqTrainer(model=model, args=targs, train_dataset=train_ds, data_collator=collate,
                   processing_class=tok).train()


def run_child(args) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.set_num_threads(args.threads)
    model_dir, workdir = Path(args.model_dir), Path(args.workdir)
    _, kind = _load_tok(model_dir)
    meter = Meter(kind, args.device, args.warmup, args.steps)
    register_optimizer_step_post_hook(meter.on_step)
    child = {"ours": child_ours, "baseline": child_baseline, "hf_grouped": child_hf_grouped,
             "trl": child_trl}[args.child]
    child(args, model_dir, workdir, meter)
    res = meter.result()
    res["system"] = args.child
    res["losses"] = getattr(meter, "losses", [])
    Path(args.result).write_text(json.dumps(res))


# --------------------------------------------------------------------------- parent side

def matmul_peak_tflops(device: str) -> float:
    """Measured dense matmul rate: bf16 8192^3 on CUDA; fp32 1024^3 on CPU (smoke runs only)."""
    import torch
    n, iters, dtype = (8192, 30, torch.bfloat16) if device == "cuda" else (1024, 5, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    rate = 2 * n ** 3 * iters / (time.perf_counter() - t) / 1e12
    del a, b
    if device == "cuda":
        torch.cuda.empty_cache()
    return rate


def lora_flops_per_token(model_dir: Path, mean_len: float) -> float:
    """Forward + input-gradient backward of the frozen model: 2 x 2 x matmul params, plus attention
    (QK^T and AV: 2 x 2 x layers x hidden x length forward, twice that with the backward)."""
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(str(model_dir))
    h, layers, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    kv = h * c.num_key_value_heads // c.num_attention_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o, k, v, gate/up/down
    matmul_params = layers * per_layer + h * c.vocab_size  # + LM head
    return 4 * matmul_params + 8 * layers * h * mean_len


def start(system: str, args, model_dir: Path, workdir: Path, cache: Path):
    result = workdir / f"result-{system}-{time.time_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", system, "--model-dir", str(model_dir),
           "--workdir", str(workdir), "--result", str(result)] + child_args(args)
    env = dict(os.environ, INSTRUCTMT_CACHE=str(cache), OMP_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(REPO))
    return system, proc, result


def finish(handle) -> dict:
    system, proc, result = handle
    out, err = proc.communicate()
    if proc.returncode != 0 or not result.exists():
        sys.stderr.write(out[-3000:] + err[-5000:])
        raise SystemExit(f"{system} run failed (exit {proc.returncode})")
    res = json.loads(result.read_text())
    result.unlink()
    return res


def summarise(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and runs[0][k] is not None]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short CPU run (< 3 minutes): 2 instances per task, the two systems run concurrently")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shape", default=None, choices=["tiny-t5", "llama-tiny", "llama-1b", "pretrained"],
                   help="model shape (default: tiny-t5 on CPU, llama-1b on CUDA)")
    p.add_argument("--model", default=None,
                   help="a real pretrained model (e.g. smollm2-135m): compare ours with transformers.Trainer "
                        "(group_by_length) and TRL's SFTTrainer instead of the default-settings baseline")
    p.add_argument("--trl-mode", default="padding_free", choices=["padding_free", "packing", "padded"],
                   help="TRL's setting with --model: padding_free (default), packing (BFD packing into "
                        "max-length rows, padding-free), padded (group_by_length)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: one epoch, so both systems train on the same examples)")
    p.add_argument("--warmup", type=int, default=None, help="steps excluded from timing (default 2 quick / 3)")
    p.add_argument("--timed-epoch", action="store_true",
                   help="run two epochs and time the second: every system's timed window trains the same examples "
                        "(default with --model: 1 instance per task --quick, 3 otherwise)")
    p.add_argument("--repeats", type=int, default=None, help="runs per system, interleaved (default 2 quick / 3)")
    p.add_argument("--concurrent", action="store_true", default=None,
                   help="run each baseline/ours pair at the same time (default with --quick)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--encoding", default="def+pos2")
    p.add_argument("--max-instances", type=int, default=None, help="per task (default 2 quick / 100)")
    p.add_argument("--max-source-length", type=int, default=None, help="default 512 (CPU) / 960 (llama-1b)")
    p.add_argument("--max-target-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (CPU)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", default=None, help="write all runs and medians here")
    p.add_argument("--child", choices=SYSTEMS + PEER_SYSTEMS[:2], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None,
                   help="where the saved model and tokenization cache are kept and reused "
                        "(default: $INSTRUCTMT_CACHE/bench_train, i.e. ~/.cache/instructmt/bench_train)")
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    if args.model:  # the real model: CPU-sized defaults (batch 4, prompts <= 256 tokens)
        args.shape = "pretrained"
        args.batch_size = args.batch_size or (16 if gpu else 4)
        args.max_source_length = args.max_source_length or 256
        args.repeats = args.repeats or (1 if args.quick else 2)
        args.concurrent = True if args.concurrent is None else args.concurrent
        # the timed window is one whole epoch (the second): every system trains exactly the same
        # examples in it, so real tokens/s compare the same work (10 steps of 96 examples drew a
        # different 40 per system, and their lengths moved the ratio)
        # (3, not 4: one training task of the SNI sample has 3 instances, and 191 examples would
        # not fill batches of 4)
        args.max_instances = args.max_instances or (1 if args.quick else 3)
        args.timed_epoch = True
    args.shape = args.shape or ("llama-1b" if gpu else "tiny-t5")
    args.max_instances = args.max_instances or (2 if args.quick else 100)
    args.concurrent = args.quick if args.concurrent is None else args.concurrent
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.batch_size = args.batch_size or (16 if gpu else 8)
    args.max_source_length = args.max_source_length or (960 if args.shape == "llama-1b" else 512)
    return args


def child_args(args) -> list[str]:
    """What every child must agree on."""
    return ["--device", args.device, "--shape", args.shape, "--steps", str(args.steps),
            "--trl-mode", args.trl_mode] + (["--model", args.model] if args.model else []) + [
                        "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                        "--d-model", str(args.d_model), "--layers", str(args.layers),
                        "--vocab-size", str(args.vocab_size), "--lora-r", str(args.lora_r),
                        "--lr", str(args.lr), "--encoding", args.encoding,
                        "--max-instances", str(args.max_instances),
                        "--max-source-length", str(args.max_source_length),
                        "--max-target-length", str(args.max_target_length), "--threads", str(args.threads),
                        "--seed", str(args.seed)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return {}
    t_start = time.time()
    workdir = Path(args.workdir) if args.workdir else Path(
        os.environ.get("INSTRUCTMT_CACHE", Path.home() / ".cache" / "instructmt")) / "bench_train"
    # the saved model depends on the shape arguments: one model directory per setting
    tag = "-".join(str(x) for x in (args.shape, args.d_model, args.layers, args.vocab_size, args.seed))
    model_dir, cache = workdir / f"model-{tag}", workdir / "cache"
    if args.model:  # a real model: its converted checkpoint directory (presets.py)
        from instructmt.models.presets import is_gguf_reference, resolve_model_reference
        model_dir = Path(resolve_model_reference(args.model).path if is_gguf_reference(args.model) else args.model)
    elif not (model_dir / "config.json").exists():
        build_model_dir(args, model_dir)
    data, _, kind = training_rows(args, model_dir, cache)  # fills the tokenization cache for both
    lengths = [len(s) + max(len(t) for t in ts) for s, ts in zip(data["source_ids"], data["target_ids"])]
    print(f"[bench_train] {len(lengths)} examples; source+target length min {min(lengths)} median "
          f"{statistics.median(lengths):.0f} max {max(lengths)}", flush=True)
    per_epoch = len(lengths) // args.batch_size
    if args.timed_epoch:
        if len(lengths) % args.batch_size:
            raise SystemExit(f"--timed-epoch needs the {len(lengths)} examples to fill batches of {args.batch_size}: "
                             f"pick another --max-instances or --batch-size")
        args.steps, args.warmup = 2 * per_epoch, per_epoch  # warm-up = epoch 1, timed = epoch 2
    args.steps = args.steps or per_epoch  # one epoch: both see the same examples
    print(f"[bench_train] data: {data_sources()[2]}; shape {args.shape} on {args.device}; batch "
          f"{args.batch_size}, {args.steps} steps ({args.warmup} warm-up), LoRA r={args.lora_r}; "
          f"{args.repeats} {'concurrent pairs' if args.concurrent else 'interleaved repeats'}", flush=True)
    peak = matmul_peak_tflops(args.device) if args.shape.startswith("llama") else None
    parity = loss_parity(args, model_dir, data) if args.model else None

    names = systems(args)
    runs: dict[str, list[dict]] = {s: [] for s in names}
    for rep in range(args.repeats):
        if len(names) == 2:
            order = names if rep % 2 == 0 else names[::-1]  # A,B,B,A: neither always goes first
        else:
            order = names[rep % len(names):] + names[:rep % len(names)]  # rotate who starts first
        if args.concurrent:  # both at once: each sees the same machine load
            handles = [start(system, args, model_dir, workdir, cache) for system in order]
            results = [finish(h) for h in handles]
        else:
            results = [finish(start(system, args, model_dir, workdir, cache)) for system in order]
        shutil.rmtree(workdir / "runs", ignore_errors=True)
        for system, r in zip(order, results):
            runs[system].append(r)
            print(f"[bench_train] repeat {rep + 1} {system:8s}: {r['real_tok_s_cpu']:8.0f} real tok/s (cpu) "
                  f"{r['real_tok_s_wall']:8.0f} (wall), padding {100 * r['padding_frac']:4.1f}%, "
                  f"peak {r['peak_mem_mb']:.0f} MB (at first batch {r.get('rss_at_first_batch_mb') or 0:.0f})",
                  flush=True)
    med = {s: summarise(runs[s]) for s in names}
    rate = "real_tok_s_wall" if args.device == "cuda" else "real_tok_s_cpu"
    if args.model:
        tok_ratio = {s: med["ours"][rate] / med[s][rate] for s in names[:2]}
        mem_ratio = med["ours"]["peak_mem_mb"] / min(med[s]["peak_mem_mb"] for s in names[:2])
    else:
        tok_ratio = med["ours"][rate] / med["baseline"][rate]
        mem_ratio = med["ours"]["peak_mem_mb"] / med["baseline"]["peak_mem_mb"]
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device,
              "systems": list(names), "model": args.model, "loss_parity": parity,
              "shape": args.shape, "data": data_sources()[2], "n_examples": len(lengths),
              "args": {k: v for k, v in vars(args).items() if k != "child"},
              "runs": runs, "median": med, "rate_used": rate, "real_tok_ratio": tok_ratio,
              "mem_ratio": mem_ratio, "elapsed_s": time.time() - t_start}
    print("\n| system | real tok/s (cpu time) | real tok/s (wall) | padding | peak RSS or GPU mem (MB) "
          "| RSS at first batch (MB) |\n|---|---|---|---|---|---|")
    for s in names:
        m = med[s]
        print(f"| {s} | {m['real_tok_s_cpu']:.0f} | {m['real_tok_s_wall']:.0f} | {100 * m['padding_frac']:.1f}% "
              f"| {m['peak_mem_mb']:.0f} | {m.get('rss_at_first_batch_mb') or float('nan'):.0f} |")
    if peak is not None:
        mean_len = statistics.mean(lengths)
        fpt = lora_flops_per_token(model_dir, mean_len)
        report["matmul_peak_tflops"] = peak
        for s in names:
            report[f"mfu_{s}"] = med[s][rate] * fpt / (peak * 1e12)
        print(f"\nmatmul peak ({'bf16' if args.device == 'cuda' else 'fp32, CPU smoke only'}) {peak:.2f} TFLOP/s; "
              f"LoRA FLOPs/token {fpt / 1e9:.2f} G; MFU "
              + ", ".join(f"{s} {100 * report[f'mfu_{s}']:.1f}%" for s in names))
    print_loss_curves(runs, names)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\n[bench_train] done in {time.time() - t_start:.0f} s")
    if args.model:
        print(f"real_tok_ratio_vs_hf_grouped={tok_ratio['hf_grouped']:.3f} "
              f"real_tok_ratio_vs_trl={tok_ratio['trl']:.3f} mem_ratio={mem_ratio:.3f}")
    else:
        print(f"real_tok_ratio={tok_ratio:.3f} mem_ratio={mem_ratio:.3f}")
    return report


def loss_parity(args, model_dir: Path, data, n_batches: int = 2) -> list[dict]:
    """The three systems' losses on the same batches (LoRA B = 0 at init, so this is the objective
    each one trains): transformers' padded batch, TRL's padding-free collator and fused LM head,
    our packed row with the target-only chunked loss. They must agree to float precision."""
    import random

    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    from instructmt.data.packing import PackedCausalCollator
    from instructmt.models.packed_attention import enable_packed_attention
    from instructmt.training.loss import causal_lm_loss

    tok, _ = _load_tok(model_dir)
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    add_fused_lm_head(model)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.lora_r, lora_alpha=2 * args.lora_r,
                                             lora_dropout=0.0, target_modules=["q_proj", "v_proj"])).eval()
    rng = random.Random(args.seed)
    idx = rng.sample(range(len(data)), n_batches * args.batch_size)
    sub = data[idx]
    rows = [{"source_ids": s, "labels": t[0], "input_ids": list(s) + list(t[0]),
             "hf_labels": [-100] * len(s) + list(t[0])} for s, t in zip(sub["source_ids"], sub["target_ids"])]
    hf_collate = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)
    trl_collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    out = []
    with torch.no_grad():
        for b in range(n_batches):
            part = rows[b * args.batch_size:(b + 1) * args.batch_size]
            hf_batch = hf_collate([{"input_ids": r["input_ids"], "labels": r["hf_labels"]} for r in part])
            trl_batch = trl_collate([{"input_ids": r["input_ids"], "labels": r["hf_labels"]} for r in part])
            losses = {"hf_grouped": float(model(**hf_batch, use_cache=False).loss),
                      "trl": float(model(**trl_batch, use_cache=False, fused_lm_head=True).loss)}
            enable_packed_attention(model)
            losses["ours"] = float(causal_lm_loss(model, PackedCausalCollator()(part)))
            model.get_base_model().set_attn_implementation("sdpa")
            out.append(losses)
            print(f"[bench_train] same batch {b + 1}: loss " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items())
                  + f" (max difference {max(losses.values()) - min(losses.values()):.1e})", flush=True)
    return out


def print_loss_curves(runs: dict[str, list[dict]], names) -> None:
    """Per-step training loss of each system's first run, and the mean over all runs' steps: the
    systems train the same thing when these agree within batch-to-batch noise."""
    names = [s for s in names if runs[s][0].get("losses")]  # the default-settings baseline logs none
    curves = {s: runs[s][0]["losses"] for s in names}
    n = max((len(c) for c in curves.values()), default=0)
    if not n:
        return
    print("\nloss per step (first run of each system):")
    print("| step | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for i in range(n):
        print(f"| {i + 1} | " + " | ".join(f"{curves[s][i]:.4f}" if i < len(curves[s]) else "-" for s in names) + " |")
    means = {s: statistics.mean(x for r in runs[s] for x in r.get("losses") or [float("nan")]) for s in names}
    print("mean loss over all steps and runs: " + ", ".join(f"{s} {means[s]:.4f}" for s in names))


if __name__ == "__main__":
    main()
