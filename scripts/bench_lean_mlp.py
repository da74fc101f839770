"""Peak memory and CPU time of `train` on SmolLM2 with and without the lean SwiGLU forward
(`instructmt/models/lean_mlp.py`): 8 steps, LoRA r 8 on q/v, batch 4, the SNI sample's 48 training
tasks × 1 instance, prompts ≤ 256 tokens, 1 torch thread; each setting in a fresh process.

    python scripts/bench_lean_mlp.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SNI = "/work/shared/data/sni"


def child(lean: bool) -> None:
    import torch
    from instructmt.adapters.base import AdapterConfig
    from instructmt.config import DataConfig, ModelConfig, TrainConfig
    from instructmt.models.presets import resolve_model_reference
    from instructmt.training import trainer
    torch.set_num_threads(1)
    if not lean:
        trainer.enable_lean_swiglu = lambda model: 0
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(prefix="lean-mlp-"),
                      model=ModelConfig(name_or_path=resolve_model_reference("smollm2-135m").path),
                      data=DataConfig(tasks=[f"{SNI}/tasks"], split_dir=f"{SNI}/splits", max_instances_per_task=1,
                                      max_source_length=256, max_target_length=64),
                      adapter=AdapterConfig(method="lora", r=8, alpha=16), seed=42, max_steps=8, batch_size=4,
                      learning_rate=5e-4, log_every=8, save_every=0)
    t = time.process_time()
    trainer.train(cfg)
    print(json.dumps({"lean": lean, "cpu_s": time.process_time() - t,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", choices=["lean", "plain"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child == "lean")
    if not os.path.isdir(f"{SNI}/tasks"):
        raise SystemExit(f"needs the SNI sample at {SNI}/tasks")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    for _ in range(args.repeats):
        for mode in ("plain", "lean"):
            out = subprocess.run([sys.executable, __file__, "--child", mode], env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:5s}: cpu {r['cpu_s']:.1f} s, peak RSS {r['peak_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
