"""PARAM_DTYPE fp16 (contexts stored and updated in fp16) and amp's step counts with STEPS_PER_BATCH.

The expected fp16 values are written out here, not taken from the trainer: every
operation of torch's SGD (weight decay, momentum, update) rounded to fp16, computed
exactly in float64 and then rounded (docs/method.md#differences-from-the-official-code).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.utils import set_random_seed  # noqa: E402

import train  # noqa: E402
from config import ConfigError  # noqa: E402

TOY = "configs/datasets/toy.yaml"
NODES = {"SoftCPT": "SOFTCPT", "CoOp": "COOP", "CoCoOp": "COCOOP"}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def toy_trainer(root: str, *opts: str, trainer: str = "SoftCPT", config: str = "tiny",
                batch: int = 32):
    """A trainer on the toy benchmark (2 shots; batch 32: one batch per epoch), no output dir."""
    from dassl.engine import build_trainer
    args = train.build_parser().parse_args([
        "--root", root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", TOY,
        "--config-file", f"configs/trainers/{trainer}/{config}.yaml", "DATASET.NUM_SHOTS", "2",
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch), *opts])
    cfg = train.setup_cfg(args)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def f16(x: torch.Tensor) -> torch.Tensor:
    """Round an exact (float64) result to fp16, as an fp16 kernel stores it."""
    return x.to(torch.float16).double()


def fp16_sgd(p0: torch.Tensor, grad: torch.Tensor, lr: float, k: int,
             momentum: float = 0.9, decay: float = 5e-4) -> torch.Tensor:
    """k SGD steps on one gradient, every operation's result rounded to fp16 (float64 inside)."""
    lr, momentum, decay = (float(np.float32(v)) for v in (lr, momentum, decay))  # torch's scalars
    p, g, buf = p0.double(), grad.double(), None
    for _ in range(k):
        d = f16(g + decay * p)
        buf = d if buf is None else f16(f16(momentum * buf) + d)
        p = f16(p - lr * buf)
    return p


# ------------------------------------------------------------------ the key
@pytest.mark.parametrize("trainer", sorted(NODES))
def test_key_defaults_to_fp32_and_is_checked(trainer):
    node = NODES[trainer]
    base = ["--trainer", trainer]
    assert train.setup_cfg(train.build_parser().parse_args(base)).TRAINER[node].PARAM_DTYPE == "fp32"
    with pytest.raises(ConfigError, match=rf"TRAINER\.{node}\.PARAM_DTYPE is 'bf16'; allowed: "
                                          r"one of \['fp32', 'fp16'\]"):
        train.setup_cfg(train.build_parser().parse_args(base + [f"TRAINER.{node}.PARAM_DTYPE", "bf16"]))
    with pytest.raises(ConfigError, match=rf"TRAINER\.{node}\.PARAM_DTYPE fp16 does not go with .*amp"):
        train.setup_cfg(train.build_parser().parse_args(
            base + [f"TRAINER.{node}.PARAM_DTYPE", "fp16", f"TRAINER.{node}.PREC", "amp"]))


# ------------------------------------------------------------------ fp16 contexts
def gaps(p: torch.Tensor, downwards: torch.Tensor) -> torch.Tensor:
    """Distance from each fp16 value to its fp16 neighbour below (``downwards``) or above."""
    x = p.detach().cpu().numpy().astype(np.float16)
    toward = np.where(downwards.cpu().numpy(), np.float16(-np.inf), np.float16(np.inf))
    return torch.from_numpy(np.abs(np.nextafter(x, toward).astype(np.float64) - x.astype(np.float64)))


@pytest.mark.parametrize("k", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_fp16_contexts_round_every_update_and_lose_small_ones(toy_root, k):
    """Warm-up lr 1e-5: the contexts stay fp16 and follow fp16 SGD; an update below half an fp16
    step is lost, one above it lands on the fp16 grid (fp32 master weights keep both); G stays fp32."""
    trainer = toy_trainer(toy_root, "TRAINER.SOFTCPT.PARAM_DTYPE", "fp16", "TRAINER.SOFTCPT.VARIANT",
                          "CATS", "TRAINER.SOFTCPT.STEPS_PER_BATCH", str(k))
    head, lr = trainer.model.head, trainer.get_current_lr()
    assert lr == pytest.approx(1e-5)  # the warm-up epoch
    # what results.json records (tiny.yaml: PREC fp32), read by scripts/results.py --paper
    assert trainer.training_setting() == {"prec": "fp32", "param_dtype": "fp16", "steps_per_batch": k}
    contexts = {"task_ctx": head.task_ctx, "class_ctx": head.class_ctx}
    start = {n: p.detach().clone() for n, p in contexts.items()}
    w0 = head.meta_net.weight.detach().clone()
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the epoch's last batch: no lr step
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    lost = landed = 0
    for name, p in contexts.items():
        assert p.dtype == torch.float16 and p.grad.dtype == torch.float16, name
        assert trainer.optim.state[p]["momentum_buffer"].dtype == torch.float16, name
        g, p0, got = p.grad, start[name], p.detach().double()  # g: the gradient this step used
        want = fp16_sgd(p0, g, lr, k)
        # torch's fp16 kernels may round lr itself to fp16 (vectorised loops): one fp16 step apart at most
        step = gaps(want.half(), want.half() > got)
        assert ((got - want).abs() <= step).all(), name
        assert (got == want).double().mean() > 0.95, name
        if k == 1:
            update = lr * (g.double() + 5e-4 * p0.double())  # what fp32 master weights would subtract
            gap = gaps(p0, update > 0)
            below, above = update.abs() < 0.45 * gap, update.abs() > 0.55 * gap
            assert torch.equal(got[below], p0.double()[below]), name  # lost entirely
            assert ((got[above] - p0.double()[above]).abs() >= gap[above]).all(), name  # >= 1 step
            lost += int((below & (update != 0)).sum())
            landed += int(above.sum())
    if k == 1:
        assert lost > 0 and landed > 0  # both happen in one warm-up step
    w = head.meta_net.weight
    assert w.dtype == torch.float32 and trainer.optim.state[w]["momentum_buffer"].dtype == torch.float32
    assert not torch.equal(w.detach(), w0)  # G learns in fp32


@pytest.mark.parametrize("trainer", ["CoOp", "CoCoOp"])
def test_baseline_contexts_stay_fp16(toy_root, trainer):
    t = toy_trainer(toy_root, f"TRAINER.{NODES[trainer]}.PARAM_DTYPE", "fp16", trainer=trainer,
                    batch=4 if trainer == "CoCoOp" else 32)
    head = t.model.head
    t.set_model_mode("train")
    t.batch_idx, t.num_batches = 0, 2
    ctx0 = head.ctx.detach().clone()
    t.forward_backward(next(iter(t.train_loader_x)))
    assert head.ctx.dtype == torch.float16 and head.ctx.grad.dtype == torch.float16
    assert not torch.equal(head.ctx.detach(), ctx0)  # it trained
    others = {n: p.dtype for n, p in head.named_parameters() if n != "ctx"}
    assert all(d == torch.float32 for d in others.values()), others  # CoCoOp's meta networks


def test_fp32_default_keeps_every_parameter_fp32(toy_root):
    t = toy_trainer(toy_root, "TRAINER.SOFTCPT.VARIANT", "CATS")
    assert {p.dtype for p in t.model.head.parameters()} == {torch.float32}


# ------------------------------------------------------------------ amp's step counts
class CountingScaler(torch.amp.GradScaler):
    """torch's CPU GradScaler, counting step and update calls."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.steps = self.updates = 0

    def step(self, optimizer, *args, **kwargs):
        self.steps += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.updates += 1
        return super().update(new_scale)


def counted(obj, name: str) -> list:
    """Wrap ``obj.name`` so every call is counted in the returned one-element list."""
    calls, original = [0], getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("amp", [True, pytest.param(False, marks=pytest.mark.slow)])
@pytest.mark.parametrize("k", [3])
def test_amp_takes_one_scaled_step_per_batch_and_k_schedule_steps(toy_root, k, amp):
    """amp (a GradScaler, injected here on CPU with CPU autocast): one optimizer step per batch;
    fp32/fp16: k per batch. The schedule takes k steps per epoch in both."""
    trainer = toy_trainer(toy_root, "TRAINER.SOFTCPT.STEPS_PER_BATCH", str(k), "OPTIM.MAX_EPOCH", "3",
                          "TRAINER.SOFTCPT.N_CTX", "2", batch=8)
    if amp:
        trainer.scaler, trainer.precision = CountingScaler(), "amp"
    optim_steps = counted(trainer.optim, "step")
    sched_steps = counted(trainer.sched, "step")
    trainer.epoch = 0
    trainer.run_epoch()
    batches = trainer.num_batches
    assert batches > 1
    assert sched_steps[0] == k  # warm-up, then k - 1 steps into the 3-epoch cosine (it cycles)
    assert trainer.get_current_lr() == pytest.approx(0.002 * (1 + math.cos(math.pi * (k - 1) / 3)) / 2)
    assert optim_steps[0] == (batches if amp else k * batches)
    if amp:
        assert trainer.scaler.steps == trainer.scaler.updates == batches


@pytest.mark.parametrize("path, node, steps", [
    ("configs/trainers/SoftCPT/rn50_ep50.yaml", "SOFTCPT", 3),
    ("configs/trainers/SoftCPT/vit_b16_ep50.yaml", "SOFTCPT", 3),
    ("configs/trainers/CoOp/rn50_ep50.yaml", "COOP", 1),
    ("configs/trainers/CoOp/vit_b16_ep50.yaml", "COOP", 1)])
def test_paper_configs_end_with_the_reproduce_setting_commented(tmp_path, path, node, steps):
    """As shipped: the defaults; with the final commented block uncommented: fp16 contexts and k steps."""
    text = open(path, encoding="utf-8").read()
    trainer = "SoftCPT" if node == "SOFTCPT" else "CoOp"

    def merged(file: str):
        return train.setup_cfg(train.build_parser().parse_args(
            ["--trainer", trainer, "--config-file", file])).TRAINER[node]

    shipped = merged(path)
    assert (shipped.PARAM_DTYPE, shipped.STEPS_PER_BATCH) == ("fp32", 1)
    block = text[text.index("# TRAINER:"):]
    uncommented = tmp_path / "reproduce.yaml"
    uncommented.write_text(text[:text.index("# TRAINER:")] + re.sub(r"(?m)^# ?", "", block))
    node_cfg = merged(str(uncommented))
    assert (node_cfg.PARAM_DTYPE, node_cfg.STEPS_PER_BATCH) == ("fp16", steps)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["rn50_ep50", "vit_b16_ep50"])
def test_reproduce_setting_on_the_paper_configs(toy_root, tiny_b16_clip, config):
    """The paper's own configs (backbone tiny-b16, 32 px, CPU workers), reproduce setting:
    one batch keeps the contexts fp16 and moves them by whole fp16 steps; G stays fp32."""
    trainer = toy_trainer(toy_root, "MODEL.BACKBONE.NAME", "tiny-b16", "INPUT.SIZE", "(32, 32)",
                          "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "2",
                          "TRAINER.SOFTCPT.PARAM_DTYPE", "fp16", "TRAINER.SOFTCPT.STEPS_PER_BATCH", "4",
                          "TRAINER.SOFTCPT.VARIANT", "CATS", config=config)
    head = trainer.model.head
    assert trainer.cfg.TRAINER.SOFTCPT.PREC == "fp16" and trainer.precision == "fp32"  # CPU fallback
    start = {n: p.detach().clone() for n, p in head.named_parameters()}
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    for name, p in head.named_parameters():
        want = torch.float32 if name.startswith("meta_net") else torch.float16
        assert p.dtype == want, name
        assert not torch.equal(p.detach(), start[name]), name
    ctx, ctx0 = head.task_ctx.detach(), start["task_ctx"]
    moved = ctx != ctx0
    assert ((ctx - ctx0).abs()[moved].double() >= gaps(ctx0, ctx < ctx0)[moved]).all()
