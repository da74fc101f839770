"""Throughput and memory of MHR (ours) vs plain LoRA (peft) vs peft's Poly at the same rank and targets.

    python scripts/bench_mhr.py --quick                 # CPU, small T5, < 2 minutes
    python scripts/bench_mhr.py --shape smollm2-135m    # CPU, SmolLM2-135M-shaped Llama (decoder-only, GQA,
                                                        # tied embeddings), batch 4, 96 + 32 tokens
    python scripts/bench_mhr.py --device cuda           # T5-large-shaped (v1.1, ~780M), bf16 autocast,
                                                        # batch 8, source 1024, target 128

What is timed: full training steps (forward, backward, AdamW step) on random tokens, the model
randomly initialised. Batches are a realistic multi-task mix with few distinct tasks per batch:
every batch holds `--tasks-per-batch` distinct task ids (default 2) drawn from `--n-tasks` (default
16) tasks, examples split evenly (e.g. 4 + 4 of batch 8); the routed methods get those task ids, LoRA
ignores them. Methods are interleaved round by round and the median step is kept. On CUDA a step is wall time
(synchronised); on CPU it is the process's CPU time with torch on one thread, because wall time on a
CPU shared with other jobs measures the other jobs.

Memory: on CUDA, torch.cuda.max_memory_allocated during the timed steps of each method (run alone).
On CPU, a deterministic account (not RSS): bytes of the model's parameters + 3x the trainable
parameters (gradient, two AdamW moments) + bytes of the tensors autograd saves for backward during
one forward (counted with saved_tensors_hooks, each storage once).

The last line is `mhr_vs_lora=<ratio> mhr_vs_peft_poly=<ratio> mem_vs_lora=<ratio>` (ratios of tokens/s;
memory ratio MHR / LoRA).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft import LoraConfig, PolyConfig, TaskType, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration  # noqa: E402

from instructmt.adapters.mhr import MHRConfig, apply_mhr  # noqa: E402

SHAPES = {
    # name: (d_model, d_ff, layers, heads, d_kv, vocab, ff_proj)
    "small": (128, 512, 2, 4, 32, 1000, "relu"),
    "medium": (256, 1024, 4, 4, 64, 2000, "relu"),
    "large": (1024, 2816, 24, 16, 64, 32128, "gated-gelu"),  # t5-v1_1-large / lm-adapt shape
}
# decoder-only shapes: (hidden, intermediate, layers, heads, kv heads, vocab); random init, same shapes as the
# real checkpoint (its weights do not change the cost of a step)
LLAMA_SHAPES = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),  # HuggingFaceTB/SmolLM2-135M(-Instruct), tied embeddings
}
METHODS = ("lora", "peft_poly", "mhr")


def is_causal(shape: str) -> bool:
    return shape in LLAMA_SHAPES


def vocab_of(shape: str) -> int:
    return LLAMA_SHAPES[shape][5] if is_causal(shape) else SHAPES[shape][5]


def build_base(shape: str, device: str, dtype: torch.dtype, seed: int = 0):
    if is_causal(shape):
        hidden, inter, layers, heads, kv, vocab = LLAMA_SHAPES[shape]
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                          tie_word_embeddings=True, max_position_embeddings=2048)
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
        return model.to(dtype)
    d_model, d_ff, layers, heads, d_kv, vocab, ff = SHAPES[shape]
    cfg = T5Config(d_model=d_model, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                   d_kv=d_kv, vocab_size=vocab, feed_forward_proj=ff, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = T5ForConditionalGeneration(cfg)
    return model.to(dtype)


def wrap(method: str, base, args) -> torch.nn.Module:
    targets = args.targets.split(",")
    task_type = TaskType.CAUSAL_LM if is_causal(args.shape) else TaskType.SEQ_2_SEQ_LM
    if method == "lora":
        # alpha = 1 gives LoRA the same 1/r scale as the MHR formula
        return get_peft_model(base, LoraConfig(task_type=task_type, r=args.r, lora_alpha=1,
                                               target_modules=targets))
    if method == "peft_poly":
        return get_peft_model(base, PolyConfig(task_type=task_type, r=args.r, n_tasks=args.n_tasks,
                                               n_skills=args.n_skills, n_splits=args.n_splits,
                                               target_modules=targets))
    return apply_mhr(base, MHRConfig(n_tasks=args.n_tasks, n_skills=args.n_skills, n_splits=args.n_splits,
                                     r=args.r, target_modules=targets, gumbel=True))


def make_batches(args, device: str, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1234)
    vocab = vocab_of(args.shape)
    out = []
    for _ in range(n):
        tasks = torch.randperm(args.n_tasks, generator=g)[: args.tasks_per_batch]
        task_ids = tasks.repeat_interleave(-(-args.batch // args.tasks_per_batch))[: args.batch]
        if is_causal(args.shape):  # prompt + target in one sequence; loss on the target tokens only
            ids = torch.randint(2, vocab, (args.batch, args.source + args.target), generator=g)
            labels = ids.clone()
            labels[:, : args.source] = -100
            out.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                        "labels": labels.to(device), "task_ids": task_ids})
            continue
        out.append({
            "input_ids": torch.randint(2, vocab, (args.batch, args.source), generator=g).to(device),
            "attention_mask": torch.ones(args.batch, args.source, dtype=torch.long).to(device),
            "labels": torch.randint(2, vocab, (args.batch, args.target), generator=g).to(device),
            "task_ids": task_ids,  # stays on the CPU, as a collator hands it over
        })
    return out


class Runner:
    def __init__(self, method: str, model, args, device: str):
        self.method, self.model, self.args, self.device = method, model, args, device
        self.model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.times: list[float] = []

    def step(self, batch: dict) -> float:
        kwargs = {k: v for k, v in batch.items() if k != "task_ids"}
        if self.method != "lora":
            kwargs["task_ids"] = batch["task_ids"]
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        clock = time.perf_counter if self.device == "cuda" else time.process_time
        sync()
        t0 = clock()
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.device == "cuda"):
            loss = self.model(**kwargs).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync()
        return clock() - t0

    def cpu_memory_bytes(self, batch: dict) -> int:
        """params + 3x trainable (grad, AdamW moments) + saved-for-backward activations of one forward."""
        seen: set = set()
        saved = [0]

        def pack(t):
            try:
                key = (t.untyped_storage().data_ptr(), t.device)
                if key not in seen:
                    seen.add(key)
                    saved[0] += t.untyped_storage().nbytes()
            except Exception:
                saved[0] += t.numel() * t.element_size()
            return t

        param_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen.update((ptr, torch.device("cpu")) for ptr in param_ptrs)  # parameters are counted below
        kwargs = {k: v for k, v in batch.items() if k != "task_ids"}
        if self.method != "lora":
            kwargs["task_ids"] = batch["task_ids"]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.model(**kwargs).loss
        del loss
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        trainable = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        self.saved_activation_bytes = saved[0]
        return params + 3 * trainable + saved[0]


def run(args) -> dict:
    device = args.device
    torch.set_num_threads(args.threads) if args.threads else None
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batches = make_batches(args, device, args.warmup + args.steps)
    tokens = args.batch * (args.source + args.target)
    results: dict[str, dict] = {}

    if device == "cuda":  # one method at a time, so that peak memory is each method's own
        for method in METHODS:
            model = wrap(method, build_base(args.shape, device, dtype), args)
            runner = Runner(method, model, args, device)
            for b in batches[: args.warmup]:
                runner.step(b)
            torch.cuda.reset_peak_memory_stats()
            times = [runner.step(b) for b in batches[args.warmup:]]
            results[method] = {"step_s": statistics.median(times), "memory_bytes": torch.cuda.max_memory_allocated(),
                               "trainable_params": runner.trainable, "memory_kind": "cuda.max_memory_allocated"}
            del runner, model
            gc.collect()
            torch.cuda.empty_cache()
    else:  # interleaved rounds on a shared CPU
        runners = {m: Runner(m, wrap(m, build_base(args.shape, device, dtype), args), args, device) for m in METHODS}
        for b in batches[: args.warmup]:
            for r in runners.values():
                r.step(b)
        for b in batches[args.warmup:]:
            for r in runners.values():
                r.times.append(r.step(b))
        for m, r in runners.items():
            results[m] = {"step_s": statistics.median(r.times), "memory_bytes": r.cpu_memory_bytes(batches[0]),
                          "trainable_params": r.trainable, "saved_activation_bytes": r.saved_activation_bytes,
                          "memory_kind": "params + 3x trainable + saved activations (bytes)"}
    for m in results:
        results[m]["tokens_per_s"] = tokens / results[m]["step_s"]
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="few steps on the small CPU shape (< 2 minutes)")
    ap.add_argument("--shape", choices=sorted(SHAPES) + sorted(LLAMA_SHAPES),
                    help="model shape (default: small on CPU, large on CUDA); smollm2-135m is the real model's "
                         "Llama shape, adapted on q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--batch", type=int, help="batch size (default 8; 4 for smollm2-135m on CPU)")
    ap.add_argument("--source", type=int, help="source length (default 1024 on CUDA, 256 on CPU)")
    ap.add_argument("--target", type=int, help="target length (default 128 on CUDA, 32 on CPU)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--n-skills", type=int, default=8)
    ap.add_argument("--n-splits", type=int, default=8)
    ap.add_argument("--n-tasks", type=int, default=16)
    ap.add_argument("--tasks-per-batch", type=int, default=2, help="distinct tasks in every batch")
    ap.add_argument("--targets", help="adapted modules (default q,k,v,o; q_proj,k_proj,v_proj,o_proj for Llama shapes)")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (default 1; steps are timed in process CPU time)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    cpu = args.device == "cpu"
    args.shape = args.shape or ("small" if cpu else "large")
    causal = is_causal(args.shape)
    args.targets = args.targets or ("q_proj,k_proj,v_proj,o_proj" if causal else "q,k,v,o")
    args.batch = args.batch or (4 if causal and cpu else 8)
    args.source = args.source or ((96 if causal else 128) if cpu else 1024)
    args.target = args.target or (32 if cpu else 128)
    if cpu and not args.threads:
        args.threads = 1  # CPU time of one thread: the honest cost on a shared machine
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    args.steps = args.steps if args.steps is not None else (6 if args.quick else (12 if cpu else 10))

    results = run(args)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device={device_name} shape={args.shape} batch={args.batch} source={args.source} target={args.target} "
          f"r={args.r} K={args.n_skills} h={args.n_splits} targets={args.targets} "
          f"tasks/batch={args.tasks_per_batch} of {args.n_tasks}")
    print(f"memory = {results['mhr']['memory_kind']}")
    print(f"{'method':<10} {'tokens/s':>10} {'ms/step':>9} {'memory MiB':>11} {'activ. MiB':>11} {'trainable':>11}")
    for m, r in results.items():
        act = r.get("saved_activation_bytes")
        act_s = f"{act / 2**20:>11.1f}" if act is not None else f"{'-':>11}"
        print(f"{m:<10} {r['tokens_per_s']:>10.0f} {1000 * r['step_s']:>9.1f} "
              f"{r['memory_bytes'] / 2**20:>11.1f} {act_s} {r['trainable_params']:>11,}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device_name, "results": results},
                                              indent=2) + "\n")
    mhr, lora, poly = results["mhr"], results["lora"], results["peft_poly"]
    print(f"mhr_vs_lora={mhr['tokens_per_s'] / lora['tokens_per_s']:.3f} "
          f"mhr_vs_peft_poly={mhr['tokens_per_s'] / poly['tokens_per_s']:.3f} "
          f"mem_vs_lora={mhr['memory_bytes'] / lora['memory_bytes']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
