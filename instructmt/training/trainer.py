"""The training loop on accelerate: any adapter method, DDP / DeepSpeed / FSDP via `accelerate
launch`, atomic checkpoints, exact resume, JSONL + TensorBoard logs, clean stop on SIGTERM/Ctrl-C,
and a hard stop (keeping the last good checkpoint) on a non-finite loss."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters.base import get_adapter, count_parameters
from ..config import TrainConfig, to_dict
from ..data.batching import length_grouped_batches
from ..data.collator import make_collator, real_tokens
from ..data.packing import batch_to_device, packing_supported
from ..data.mixture import Mixture
from ..data.tokenize import EncodeSpec, tokenize_pairs
from ..errors import InstructMTError
from ..io_safety import atomic_write_text, user_io_error
from ..validation import validate_train_config
from ..models.loading import RUN_META, TINY_PRESETS, load_model_and_tokenizer
from ..models.presets import describe_base
from ..models.packed_attention import enable_packed_attention
from . import checkpoint as ckpt
from .heldout_eval import HeldoutScorer, PeriodicHeldoutEval, check_eval_keys
from .loss import causal_lm_loss, chunked_head_supported
from .task_setup import TaskSplit, resolve_tasks, tokenizer_corpus

log = logging.getLogger(__name__)


class TrainingDiverged(InstructMTError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    final_loss: float | None
    interrupted: bool = False
    losses: list[float] = field(default_factory=list)


class _StopFlag:
    """SIGTERM / SIGINT ask for a checkpoint at the next step boundary, then a clean exit."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    world = int(os.environ.get("WORLD_SIZE", "1"))
    kwargs = []
    if not torch.cuda.is_available() and world > 1:
        kwargs.append(InitProcessGroupKwargs(backend="gloo"))  # CPU multi-process (DDP / DeepSpeed)
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
            # Without this, `accelerate launch` on a machine without GPUs starts N processes that
            # each train alone (DistributedType.NO) instead of one data-parallel job.
            os.environ["ACCELERATE_USE_CPU"] = "1"
    if not torch.cuda.is_available() and cfg.mixed_precision in ("bf16", "fp16"):
        # Measured on 2 CPU cores, SmolLM2-135M LoRA: bf16 autocast 13 s/step and 3.2 GB against
        # 3.3 s/step and 0.44 GB in fp32. Honour the request, but say what it costs.
        warnings.warn(f"--mixed-precision {cfg.mixed_precision} on CPU runs autocast, which was about 4x "
                      "slower and 7x more memory than fp32 for SmolLM2-135M here; use --mixed-precision no "
                      "on CPU", stacklevel=2)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                      kwargs_handlers=kwargs)
    if world > 1 and acc.distributed_type == DistributedType.NO:
        raise InstructMTError(
            f"accelerate started {world} processes but no process group: each would train alone. "
            "On CPU launch with ACCELERATE_USE_CPU=1 (see scripts/accelerate/cpu_ddp.yaml).")
    return acc


def _seed_all(seed: int) -> None:
    from accelerate.utils import set_seed
    set_seed(seed)


def train(cfg: TrainConfig, split: TaskSplit | None = None, accelerator=None,
          heldout_scorer: HeldoutScorer | None = None) -> TrainResult:
    """`heldout_scorer` (from the command layer, see training/heldout_eval.py) scores the held-out
    tasks at step 0 and every `cfg.eval_every` steps; without one, `eval_every` is ignored."""
    validate_train_config(cfg)  # library callers too: a 0 or NaN never reaches the loop
    check_eval_keys(cfg)
    accelerator = accelerator or make_accelerator(cfg)
    is_main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    _seed_all(cfg.seed)
    split = split or resolve_tasks(cfg.data)  # bad tasks fail before anything is written
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise user_io_error(e, out, "create the run directory") from None
    task_names = [t.name for t in split.seen]
    model, tok, kind = load_model_and_tokenizer(
        cfg.model, texts=tokenizer_corpus(split) if cfg.model.name_or_path in TINY_PRESETS else None,
        seed=cfg.seed)
    method = get_adapter(cfg.adapter.method)
    base_snapshot = None
    if cfg.model.name_or_path in TINY_PRESETS:
        # random-init bases cannot be re-downloaded: keep their weights beside the adapter
        base_snapshot = {k: v.detach().clone() for k, v in _dedupe_tied(model.state_dict()).items()}
    model = method.apply(model, cfg.adapter, task_names)
    trainable, total = count_parameters(model)
    if is_main:
        print(f"[instructmt] {cfg.adapter.method}: {trainable:,} trainable / {total:,} parameters "
              f"({100 * trainable / max(total, 1):.2f}%); {len(split.seen)} seen, {len(split.held_out)} held-out tasks")

    mixture = Mixture.from_tasks(split.seen, max_instances=cfg.data.max_instances_per_task,
                                 holdback=cfg.data.holdback_per_seen_task, cap=cfg.data.mixing_cap,
                                 temperature=cfg.data.temperature, seed=cfg.seed,
                                 rates=split.rates)
    by_name = {t.name: t for t in split.seen}
    pairs = [(by_name[n], inst) for n, insts in mixture.instances.items() for inst in insts]
    row_of = {(t.name, inst.id): k for k, (t, inst) in enumerate(pairs)}
    spec = EncodeSpec(kind, cfg.data.encoding, cfg.data.max_source_length, cfg.data.max_target_length,
                      cfg.model.use_chat_template)
    with accelerator.main_process_first():
        data = tokenize_pairs(pairs, tok, spec)
    src_lengths, n_targets = _row_lengths(data)
    packed = cfg.packing and packing_supported(kind, method.routed)
    if packed:
        enable_packed_attention(model)
    collate = make_collator(kind, tok, task_names if method.routed else None, packed=packed)

    world, rank = accelerator.num_processes, accelerator.process_index
    micro_per_epoch = (mixture.epoch_size() // cfg.batch_size) // world
    micro_per_epoch -= micro_per_epoch % cfg.grad_accum
    steps_per_epoch = micro_per_epoch // cfg.grad_accum
    if steps_per_epoch == 0:
        raise InstructMTError(f"too little data for one step: {mixture.epoch_size()} examples, batch "
                              f"{cfg.batch_size} x {world} processes x accumulation {cfg.grad_accum}")
    total_steps = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))

    from accelerate.utils import DistributedType
    from transformers import get_scheduler
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    # target-only chunked loss (training/loss.py) where the LM head is a plain, unsharded linear layer
    chunked_loss = (kind == "causal" and cfg.loss_chunk_size > 0 and not fsdp and not _is_sharded(accelerator)
                    and chunked_head_supported(model))
    if fsdp:  # FSDP wraps (and flattens) parameters: the optimizer must see the wrapped ones
        model = accelerator.prepare(model)
    groups = method.param_groups(model, cfg.learning_rate, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=total_steps)
    _configure_deepspeed(accelerator, cfg)
    if fsdp:
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    global_step, start_epoch, start_micro = 0, 0, 0
    if cfg.resume:
        last = ckpt.latest_checkpoint(ckpt_root)
        if last is not None:
            st = ckpt.read_state(last)  # a truncated state file fails here, in one line
            try:
                accelerator.load_state(str(last))
            except Exception as e:  # a corrupted checkpoint: say which, and what to do
                raise InstructMTError(
                    f"cannot load checkpoint {last}: {type(e).__name__}: {e}. Delete it to resume "
                    f"from the one before, or start without --resume.") from e
            global_step, start_epoch = st["global_step"], st["epoch"]
            # position in the epoch's global batch list, so a different process count resumes
            # at the same data (each process takes every world-th batch)
            start_micro = st.get("batches_done_in_epoch", 0) // world
            if is_main:
                print(f"[instructmt] resumed from {last} (step {global_step})")
        elif is_main:
            print("[instructmt] --resume: no checkpoint yet, starting fresh")

    writer = None
    log_fh = None
    if is_main:
        atomic_write_text(out / "config.yaml", _yaml(to_dict(cfg)))
        try:
            log_fh = open(out / "logs.jsonl", "a" if cfg.resume else "w", encoding="utf-8")
        except OSError as e:
            raise user_io_error(e, out / "logs.jsonl") from None
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard is optional at run time
            writer = None

    from tqdm.auto import tqdm
    bar = tqdm(total=total_steps, initial=global_step, disable=not is_main, desc="train", dynamic_ncols=True)
    if cfg.eval_every and heldout_scorer is None:
        warnings.warn("eval_every is set but no held-out scorer was passed to train(): no curve", stacklevel=2)
    periodic = PeriodicHeldoutEval(heldout_scorer, cfg.eval_every if heldout_scorer else 0,
                                   accelerator=accelerator, tokenizer=tok, kind=kind, split=split,
                                   method=method, log_fh=log_fh, writer=writer)
    hook = getattr(method, "on_step", None)
    step_info: dict = {}
    losses: list[float] = []
    last_loss = None
    interrupted = False
    t0 = time.time()
    tokens_seen = 0

    def save_checkpoint(epoch: int, micro: int):
        tmp = ckpt.tmp_dir_for(ckpt_root, global_step)
        if is_main:
            ckpt_root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
        except OSError as e:  # disk full / read-only: the previous checkpoint stays the latest
            raise user_io_error(e, tmp, "write the checkpoint") from None
        accelerator.wait_for_everyone()
        if is_main:
            ckpt.finalize(ckpt_root, global_step, {"global_step": global_step, "epoch": epoch,
                                                   "batches_done_in_epoch": micro * world, "world_size": world,
                                                   "losses_tail": losses[-5:]},
                          cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    model.train()
    if global_step == 0 and periodic.due(0, last_step=total_steps):  # the base model, before any update
        t0 += periodic.run(model, 0)["eval_s"]  # elapsed_s counts training time only
    with _StopFlag() as stop:
        epoch = start_epoch
        done = global_step >= total_steps
        while not done:
            order = mixture.epoch(epoch)
            rng = random.Random(f"{cfg.seed}-targets-{epoch}")
            rows_idx = [row_of[(name, mixture.instances[name][i].id)] for name, i in order]
            target_pick = [rng.randrange(n_targets[r]) for r in rows_idx]
            lengths = [src_lengths[r] for r in rows_idx]
            batches = length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                             group_by_length=cfg.group_by_length)
            batches = [b for b in batches if len(b) == cfg.batch_size]
            mine = batches[rank::world][:micro_per_epoch]
            if not mine:  # e.g. every mixing rate is 0: never loop over empty epochs
                raise InstructMTError(f"epoch {epoch} has no full batch to train on ({len(order)} examples "
                                      f"sampled, batch size {cfg.batch_size}): check the mixture's rates")
            micro = start_micro if epoch == start_epoch else 0
            acc_loss = torch.zeros((), device=accelerator.device)
            while micro < len(mine):
                b = mine[micro]
                rows = _batch_rows(data, [rows_idx[j] for j in b], [target_pick[j] for j in b])
                batch = batch_to_device(collate(rows), accelerator.device)
                if hook is not None and micro % cfg.grad_accum == 0:
                    # a method's per-step hook (e.g. QFA samples bit-widths); what it returns is logged
                    step_info = hook(accelerator.unwrap_model(model), global_step) or {}
                with accelerator.accumulate(model):
                    loss = (causal_lm_loss(model, batch, cfg.loss_chunk_size) if chunked_loss
                            else model(**batch).loss)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                acc_loss += loss.detach().float() / cfg.grad_accum
                tokens_seen += real_tokens(batch)
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                # one small collective per step: mean loss, and stop flags agreed by every rank
                status = torch.stack([acc_loss, torch.tensor(float(stop.requested), device=acc_loss.device)])
                status = accelerator.reduce(status, reduction="sum")
                mean_loss = float(status[0]) / world
                acc_loss = torch.zeros((), device=accelerator.device)
                if not math.isfinite(mean_loss):
                    bar.close()
                    last = ckpt.latest_checkpoint(ckpt_root)
                    raise TrainingDiverged(
                        f"loss became {mean_loss} at step {global_step}; stopped. "
                        + (f"Last good checkpoint: {last} (resume with --resume after lowering the "
                           f"learning rate)" if last else "No checkpoint was written yet."))
                losses.append(mean_loss)
                last_loss = mean_loss
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if is_main and (global_step % max(cfg.log_every, 1) == 0 or global_step == total_steps):
                    rec = {"step": global_step, "epoch": epoch, "loss": mean_loss,
                           "lr": scheduler.get_last_lr()[0], "tokens_per_rank": tokens_seen,
                           "elapsed_s": round(time.time() - t0, 3)}
                    rec.update({k: v for k, v in step_info.items() if k not in rec})
                    try:
                        log_fh.write(json.dumps(rec) + "\n")
                        log_fh.flush()
                    except OSError as e:  # disk full mid-run: the last checkpoint is still good
                        raise user_io_error(e, out / "logs.jsonl") from None
                    if writer:
                        writer.add_scalar("train/loss", mean_loss, global_step)
                        writer.add_scalar("train/lr", rec["lr"], global_step)
                at_end_of_epoch = micro >= len(mine)
                state_epoch, state_micro = (epoch + 1, 0) if at_end_of_epoch else (epoch, micro)
                if float(status[1]) > 0:
                    save_checkpoint(state_epoch, state_micro)
                    interrupted = True
                    done = True
                    break
                if periodic.due(global_step, last_step=total_steps):  # before the checkpoint: a resume keeps it
                    t0 += periodic.run(model, global_step)["eval_s"]
                if cfg.save_every and global_step % cfg.save_every == 0 and global_step < total_steps:
                    save_checkpoint(state_epoch, state_micro)
                if global_step >= total_steps:
                    done = True
                    break
            epoch += 1
    bar.close()
    if writer:
        writer.close()
    if log_fh:
        log_fh.close()
    periodic.finish(out)

    _check_ranks_agree(accelerator, model, out)
    model_dir = None
    if not interrupted:
        model_dir = save_final(accelerator, model, tok, method, cfg, split, kind, base_snapshot, out)
    elif is_main:
        print(f"[instructmt] stopped by signal at step {global_step}; checkpoint saved. Continue with --resume.")
    accelerator.wait_for_everyone()
    return TrainResult(out, model_dir, global_step, last_loss, interrupted, losses)


def _row_lengths(data) -> tuple[list[int], list[int]]:
    """(source length, number of reference targets) of every row, computed in arrow: indexing a
    lazy `datasets` column row by row costs ~0.3 ms a row, i.e. minutes per epoch at SNI scale."""
    import pyarrow.compute as pc
    table = data.with_format("arrow")[:]
    return (pc.list_value_length(table.column("source_ids")).to_pylist(),
            pc.list_value_length(table.column("target_ids")).to_pylist())


def _batch_rows(data, idx: list[int], picks: list[int]) -> list[dict]:
    """Collator rows for dataset rows `idx` (one arrow take per batch), with target `picks[k]`
    of row k as its labels."""
    sub = data[idx]
    return [{"source_ids": src, "labels": tgts[pick], "task": task}
            for src, tgts, task, pick in zip(sub["source_ids"], sub["target_ids"], sub["task"], picks)]


def _configure_deepspeed(accelerator, cfg: TrainConfig) -> None:
    """We batch ourselves (no DataLoader goes through prepare), so DeepSpeed is told the sizes."""
    from accelerate.utils import DistributedType
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["train_batch_size"] = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    if cfg.max_grad_norm:
        ds["gradient_clipping"] = cfg.max_grad_norm


def _check_ranks_agree(accelerator, model, out: Path) -> None:
    """Data-parallel ranks must end with identical trainable weights; record and verify it.
    (Skipped under ZeRO-3 / FSDP, where each rank holds only a shard.)"""
    if accelerator.num_processes == 1 or _is_sharded(accelerator):
        return
    unwrapped = accelerator.unwrap_model(model)
    flat = [p.detach().double().reshape(-1) for p in unwrapped.parameters() if p.requires_grad]
    weights = torch.cat(flat) if flat else torch.zeros(1, dtype=torch.float64)
    pos = torch.arange(1, weights.numel() + 1, dtype=torch.float64, device=weights.device)
    checksum = torch.stack([weights.sum(), (weights * pos).sum()]).float().to(accelerator.device)
    gathered = accelerator.gather(checksum.unsqueeze(0)).cpu().tolist()
    if accelerator.is_main_process:
        (out / "rank_checksums.json").write_text(json.dumps(gathered), encoding="utf-8")
        if any(abs(g[0] - gathered[0][0]) > 1e-3 * (1 + abs(gathered[0][0])) for g in gathered):
            raise InstructMTError(f"data-parallel ranks diverged: weight checksums {gathered}")


def _is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType
    return accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3)


def save_final(accelerator, model, tok, method, cfg: TrainConfig, split: TaskSplit, kind: str,
               base_snapshot: dict | None, out: Path) -> Path:
    """Gather (ZeRO-3 / FSDP) and write RUN/model atomically: adapter, tokenizer, run metadata."""
    state_dict = accelerator.get_state_dict(model) if _is_sharded(accelerator) else None
    model_dir = out / "model"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)

        def write(tmp: Path):
            if state_dict is not None:
                method.save(unwrapped, tmp, state_dict=state_dict)
            else:
                method.save(unwrapped, tmp)
            tok.save_pretrained(str(tmp))
            meta = {"method": cfg.adapter.method, "base_model": cfg.model.name_or_path, "kind": kind,
                    "task_names": [t.name for t in split.seen], "seen": [t.name for t in split.seen],
                    "held_out": [t.name for t in split.held_out], "encoding": cfg.data.encoding,
                    "task_families": {t.name: t.family for t in split.seen + split.held_out},
                    "max_source_length": cfg.data.max_source_length,
                    "max_target_length": cfg.data.max_target_length,
                    "use_chat_template": cfg.model.use_chat_template,  # eval must prompt as training did
                    "task_sources": list(cfg.data.tasks), "adapter": to_dict(cfg.adapter),
                    **describe_base(cfg.model.name_or_path)}
            if base_snapshot is not None and cfg.adapter.method != "full":
                from safetensors.torch import save_file
                base_dir = tmp / "base"
                base_dir.mkdir()
                base_cfg = unwrapped.get_base_model().config if hasattr(unwrapped, "get_base_model") else unwrapped.config
                base_cfg.save_pretrained(str(base_dir))
                save_file({k: v.contiguous() for k, v in base_snapshot.items()},
                          str(base_dir / "model.safetensors"), metadata={"format": "pt"})
                meta["base_saved"] = "base"
            (tmp / RUN_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        ckpt.atomic_save_dir(model_dir, write)
        print(f"[instructmt] saved {cfg.adapter.method} model to {model_dir}")
    accelerator.wait_for_everyone()
    return model_dir


def _dedupe_tied(sd: dict) -> dict:
    """safetensors refuses shared storage: drop tied duplicates (reloading re-ties them)."""
    seen, out = set(), {}
    for k, v in sd.items():
        key = (v.data_ptr(), v.shape)
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def _yaml(data: dict) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)
