"""SoftCPT training: STEPS_PER_BATCH against hand-written SGD, learning, and the trainer's config path."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.engine import TRAINER_REGISTRY, build_trainer  # noqa: E402
from dassl.utils import set_random_seed  # noqa: E402

import train  # noqa: E402
from datasets.task_info import TaskInfo  # noqa: E402
from trainers.parts.base import MultiTaskCLIP  # noqa: E402
from trainers.parts.losses import multitask_loss, training_columns  # noqa: E402
from trainers.softcpt import SoftCPTHead  # noqa: E402

TOY = "configs/datasets/toy.yaml"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def toy_trainer(root: str, *opts: str, config: str = "tiny"):
    """A SoftCPT trainer on the toy benchmark (2 shots, batch 32: one batch per epoch), no output dir."""
    args = train.build_parser().parse_args([
        "--root", root, "--seed", "1", "--trainer", "SoftCPT", "--dataset-config-file", TOY,
        "--config-file", f"configs/trainers/SoftCPT/{config}.yaml", "DATASET.NUM_SHOTS", "2",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "32", *opts])
    cfg = train.setup_cfg(args)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def test_softcpt_is_registered_with_its_keys():
    assert "SoftCPT" in TRAINER_REGISTRY.registered_names()
    cfg = train.setup_cfg(train.build_parser().parse_args([]))
    for key in ("N_CTX", "CTX_INIT", "CLASS_TOKEN_POSITION", "CSC", "TASK_N_CTX", "TASK_CSC",
                "TASK_CTX_INIT", "CLASS_N_CTX", "CLASS_CSC", "CLASS_CTX_INIT", "META_NET",
                "CLS_SAMPLE_RATE", "FREEZE_CLS_PROMPT", "PREC", "STEPS_PER_BATCH", "VARIANT"):
        assert key in cfg.TRAINER.SOFTCPT


@pytest.mark.parametrize("name, backbone", [("rn50_ep50", "RN50"), ("vit_b16_ep50", "ViT-B/16")])
def test_protocol_configs(name, backbone):
    """The shipped configs give the protocol of docs/benchmarks.md and docs/method.md once merged over the defaults."""
    cfg = train.setup_cfg(train.build_parser().parse_args(
        ["--config-file", f"configs/trainers/SoftCPT/{name}.yaml"]))
    o = cfg.OPTIM
    assert (o.NAME, o.LR, o.MOMENTUM, o.WEIGHT_DECAY, o.LR_SCHEDULER, o.MAX_EPOCH) == \
        ("sgd", 0.002, 0.9, 5e-4, "cosine", 50)
    assert (o.WARMUP_EPOCH, o.WARMUP_TYPE, o.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32 and cfg.INPUT.SIZE == (224, 224)
    assert list(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]
    assert cfg.INPUT.PIXEL_MEAN == [0.48145466, 0.4578275, 0.40821073]
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TRAINER.SOFTCPT.PREC == "fp16"
    assert cfg.MODEL.BACKBONE.NAME == backbone and cfg.TRAINER.SOFTCPT.VARIANT == "NATA"


@pytest.mark.parametrize("k", [1, 3])
def test_one_batch_equals_k_sgd_steps_on_its_gradient(toy_root, k):
    """STEPS_PER_BATCH k: parameters after one batch == k hand-written SGD steps (momentum, decay)."""
    trainer = toy_trainer(toy_root, "TRAINER.SOFTCPT.STEPS_PER_BATCH", str(k),
                          "TRAINER.SOFTCPT.VARIANT", "CATS", "OPTIM.LR", "0.5", "OPTIM.WARMUP_EPOCH", "0")
    trainer.set_model_mode("train")
    batch = next(iter(trainer.train_loader_x))
    head, lr = trainer.model.head, trainer.get_current_lr()
    names, params = zip(*head.named_parameters())
    start = [p.detach().clone() for p in params]
    toc = head.task_of_class
    images, labels = batch["img"], batch["label"]
    loss = multitask_loss(trainer.model(images), labels, toc[labels], toc)  # all classes
    grads = torch.autograd.grad(loss, params)
    expected = []
    for p, g in zip(start, grads):  # torch.optim.SGD's update, written out
        buf = None
        for _ in range(k):
            d = g + 5e-4 * p
            buf = d if buf is None else 0.9 * buf + d
            p = p - lr * buf
        expected.append(p)
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the epoch's last batch: no lr step
    trainer.forward_backward(batch)
    for name, p, p0, want in zip(names, params, start, expected):
        torch.testing.assert_close(p.detach() - p0, want - p0, rtol=1e-4, atol=1e-7, msg=name)
    assert trainer.get_current_lr() == lr


@pytest.mark.parametrize("k", [1, 3])
def test_lr_after_each_epoch_is_k_scheduler_steps(toy_root, k):
    """Dassl's warm-up + cosine, stepped k times per epoch (k = 3 cycles, as the official code)."""
    trainer = toy_trainer(toy_root, "TRAINER.SOFTCPT.STEPS_PER_BATCH", str(k), "OPTIM.MAX_EPOCH", "3",
                          "TRAINER.SOFTCPT.N_CTX", "2")
    assert trainer.get_current_lr() == pytest.approx(1e-5)  # warm-up epoch
    for epoch in range(3):
        trainer.epoch = epoch
        trainer.run_epoch()
        s = k * (epoch + 1)  # scheduler steps so far
        want = 1e-5 if s < 1 else 0.002 * (1 + math.cos(math.pi * (s - 1) / 3)) / 2
        assert trainer.get_current_lr() == pytest.approx(want, rel=1e-9)


def test_bad_config_fails_before_data_or_model(tmp_path):
    """check_cfg runs first: nothing is read from $DATA (empty here) before the error."""
    with pytest.raises(ValueError, match=r"TRAINER\.SOFTCPT\.CLS_SAMPLE_RATE"):
        toy_trainer(str(tmp_path), "TRAINER.SOFTCPT.CLS_SAMPLE_RATE", "2.0")
    with pytest.raises(ValueError, match=r"TRAINER\.SOFTCPT\.VARIANT"):
        toy_trainer(str(tmp_path), "TRAINER.SOFTCPT.VARIANT", "NATX")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ learning
TWO_TASKS = TaskInfo(("shapes", "colours"), ("shape recognition", "colour recognition"),
                     (("circle", "square", "cross"), ("red", "blue")), ("overall_acc", "mean_acc"))


def learn(clip_model, seed: int, steps: int = 60):
    """NATA on a synthetic two-task problem: class = a fixed random image plus noise."""
    torch.manual_seed(seed)
    prototypes = torch.randn(5, 3, 32, 32)

    def sample(n):
        y = torch.randint(0, 5, (n,))
        return prototypes[y] + 0.5 * torch.randn(n, 3, 32, 32), y

    head = SoftCPTHead(TWO_TASKS.names, TWO_TASKS.classnames, clip_model.token_embedding, 32, n_ctx=4)
    model = MultiTaskCLIP(clip_model, head)
    toc = head.task_of_class
    optim = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    test_x, test_y = sample(100)

    def accuracy():
        with torch.no_grad():
            own = toc[test_y][:, None] == toc[None, :]
            return (model(test_x).masked_fill(~own, -torch.inf).argmax(1) == test_y).float().mean().item()

    before, losses = accuracy(), []
    for _ in range(steps):
        x, y = sample(16)
        columns = training_columns(y, toc, sample_rate=0.5)  # with class sampling
        loss = multitask_loss(model(x, columns), torch.searchsorted(columns, y), toc[y], toc[columns])
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return before, accuracy(), losses


@pytest.mark.slow  # trains for many steps, twice
def test_learns_a_two_task_problem_reproducibly(tiny_clip):
    before, after, losses = learn(tiny_clip, seed=0)
    chance = (3 / 5) * (1 / 3) + (2 / 5) * (1 / 2)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert after > chance + 0.2 and after > before
    assert learn(tiny_clip, seed=0) == (before, after, losses)  # same seed, identical run
