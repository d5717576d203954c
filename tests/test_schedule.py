"""The LR schedule equals Dassl's definition, epoch by epoch."""
from __future__ import annotations

import math

import pytest
import torch
from yacs.config import CfgNode as CN

from trainers.run.schedule import build_lr_scheduler


def optim_cfg(**kw) -> CN:
    # (WARMUP_MIN_LR differs from WARMUP_CONS_LR, Dassl's 1e-5 both, so that one read for the
    # other shows)
    cfg = CN(dict(LR=0.002, LR_SCHEDULER="cosine", STEPSIZE=(-1,), GAMMA=0.1, MAX_EPOCH=10,
                  WARMUP_EPOCH=-1, WARMUP_TYPE="linear", WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=3e-5,
                  WARMUP_RECOUNT=True))
    cfg.update(kw)
    return cfg


def dassl_reference(cfg: CN, epochs: int) -> list[float]:
    """Dassl's build_lr_scheduler, replayed: torch's successor scheduler stepped
    per epoch behind Dassl's warm-up wrapper (which shares the optimizer)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.LR)
    if cfg.LR_SCHEDULER == "cosine":
        succ = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(cfg.MAX_EPOCH))
    elif cfg.LR_SCHEDULER == "single_step":
        step = cfg.STEPSIZE[-1] if isinstance(cfg.STEPSIZE, (list, tuple)) else cfg.STEPSIZE
        succ = torch.optim.lr_scheduler.StepLR(opt, step if step > 0 else cfg.MAX_EPOCH, cfg.GAMMA)
    else:
        succ = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.STEPSIZE), cfg.GAMMA)
    w = cfg.WARMUP_EPOCH
    if w > 0 and not cfg.WARMUP_RECOUNT:  # Dassl: the successor counts the warm-up epochs too
        succ.last_epoch = w
    if w <= 0:
        lrs = []
        for _ in range(epochs):
            lrs.append(opt.param_groups[0]["lr"])
            succ.step()
        return lrs

    def warm(e):
        if cfg.WARMUP_TYPE == "constant":
            return cfg.WARMUP_CONS_LR
        return cfg.WARMUP_MIN_LR if e == 0 else cfg.LR * e / w

    def set_lr(v):
        opt.param_groups[0]["lr"] = v

    last = 0
    set_lr(warm(0))  # the wrapper's initial step
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        if last >= w:  # wrapper hands over to the successor
            succ.step()
        else:
            last += 1
            set_lr(succ.get_last_lr()[0] if last >= w else warm(last))
    return lrs


def ours(cfg: CN, epochs: int) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.LR)
    sched = build_lr_scheduler(opt, cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    return lrs


CASES = {
    "coop_protocol": dict(MAX_EPOCH=50, WARMUP_EPOCH=1, WARMUP_TYPE="constant"),
    "cosine_no_warmup": dict(MAX_EPOCH=20),
    "linear_warmup_3": dict(MAX_EPOCH=12, WARMUP_EPOCH=3, WARMUP_TYPE="linear"),
    "single_step": dict(LR_SCHEDULER="single_step", STEPSIZE=(4,), WARMUP_EPOCH=2,
                        WARMUP_TYPE="constant"),
    "single_step_default": dict(LR_SCHEDULER="single_step"),
    "multi_step": dict(LR_SCHEDULER="multi_step", STEPSIZE=(3, 7), WARMUP_EPOCH=1),
    "multi_step_unsorted": dict(LR_SCHEDULER="multi_step", STEPSIZE=(7, 3), WARMUP_EPOCH=1),
    "single_step_last_of_a_list": dict(LR_SCHEDULER="single_step", STEPSIZE=(2, 5)),
    # WARMUP_RECOUNT False: the successor's step is the epoch. Dassl's recursive step
    # schedules equal the closed form when no step falls inside the warm-up.
    "single_step_no_recount": dict(LR_SCHEDULER="single_step", STEPSIZE=(4,), WARMUP_EPOCH=2,
                                   WARMUP_TYPE="linear", WARMUP_RECOUNT=False),
    "multi_step_no_recount": dict(LR_SCHEDULER="multi_step", STEPSIZE=(3, 7), WARMUP_EPOCH=2,
                                  WARMUP_TYPE="constant", WARMUP_RECOUNT=False),
}


@pytest.mark.parametrize("case", CASES)
def test_lr_at_each_epoch_equals_dassl(case):
    cfg = optim_cfg(**CASES[case])
    epochs = cfg.MAX_EPOCH + 2
    torch.testing.assert_close(ours(cfg, epochs), dassl_reference(cfg, epochs), rtol=1e-9, atol=1e-12)


def test_coop_protocol_values():
    lrs = ours(optim_cfg(MAX_EPOCH=50, WARMUP_EPOCH=1, WARMUP_TYPE="constant"), 50)
    assert lrs[0] == 1e-5 and lrs[1] == pytest.approx(0.002)
    assert lrs[-1] == pytest.approx(0.001 * (1 + math.cos(math.pi * 48 / 50)))  # cosine(e - 1)


def test_cosine_without_recount_is_the_closed_form_of_the_epoch():
    """WARMUP_RECOUNT False (module docstring): LR at e = W, then cosine at step e (Dassl's
    recursive cosine drifts from this, so the values are written out from the formula)."""
    lrs = ours(optim_cfg(MAX_EPOCH=10, WARMUP_EPOCH=2, WARMUP_TYPE="linear", WARMUP_RECOUNT=False), 10)
    expected = [3e-5, 0.002 * 1 / 2, 0.002] + [0.001 * (1 + math.cos(math.pi * e / 10)) for e in range(3, 10)]
    torch.testing.assert_close(lrs, expected, rtol=1e-9, atol=1e-12)


def test_state_dict_round_trip_resumes_the_schedule():
    cfg = optim_cfg(MAX_EPOCH=10, WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.LR)
    sched = build_lr_scheduler(opt, cfg)
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.LR)
    sched2 = build_lr_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    sched.step()
    sched2.step()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_bad_scheduler_names_the_choices():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="cosine"):
        build_lr_scheduler(opt, optim_cfg(LR_SCHEDULER="poly"))
