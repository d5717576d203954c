"""PLOT per task (trainers/plot.py): Sinkhorn, local features, logits, loss and gradient
against plain computations, and a toy run that learns.

The references share no code with the trainer: Sinkhorn is a loop over problems in
float64, local features are read by hand from the towers' weights (ViT layers, the
ResNet attention pool's own multi-head attention), and text features go through
CLIP's full 77-token text tower one prompt at a time (tests/test_baselines.py).
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.config import get_cfg_default  # noqa: E402
from dassl.engine import TRAINER_REGISTRY  # noqa: E402
from open_clip.modified_resnet import ModifiedResNet  # noqa: E402
from test_baselines import ONE_TASK, assert_close_rel, ref_text_feature, run_train  # noqa: E402
from test_text_speedups import TASKS_MANY  # noqa: E402

from config import ConfigError, extend_cfg  # noqa: E402
from config.plot import check_plot_cfg  # noqa: E402
from datasets.task_info import TaskInfo  # noqa: E402
from trainers.parts.base import MultiTaskCLIP  # noqa: E402
from trainers.parts.local_features import local_features  # noqa: E402
from trainers.parts.text_encoder import PREFIX_CHUNK  # noqa: E402
from trainers.plot import PLOT, PLOTHead, TransportError, sinkhorn  # noqa: E402

N_PROMPTS, N_CTX = 4, 3


# ---------------------------------------------------------------- references
def ref_sinkhorn(kernel: torch.Tensor, max_iter: int, thresh: float) -> torch.Tensor:
    """The textbook loop in float64, problem by problem, entry by entry for the scalings;
    one stopping test for all problems (the mean absolute change of the row scalings)."""
    kernel = kernel.double()
    p, m, n = kernel.shape
    r = [[1.0] * m for _ in range(p)]
    c = [[1.0] * n for _ in range(p)]
    for _ in range(max_iter):
        change = 0.0
        for i in range(p):
            k = kernel[i].tolist()
            new_r = [(1 / m) / sum(k[a][b] * c[i][b] for b in range(n)) for a in range(m)]
            change += sum(abs(x - y) for x, y in zip(new_r, r[i]))
            r[i] = new_r
            c[i] = [(1 / n) / sum(k[a][b] * r[i][a] for a in range(m)) for b in range(n)]
        if change / (p * m) < thresh:
            break
    return torch.tensor([[[r[i][a] * float(kernel[i, a, b]) * c[i][b] for b in range(n)]
                          for a in range(m)] for i in range(p)], dtype=torch.float64)


def ref_vit_local(visual, images: torch.Tensor) -> torch.Tensor:
    """Every token of a CLIP ViT after ln_post and proj, the class token first ``(B, 1 + M, D)``."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, M, width) patches
    cls = visual.class_embedding.expand(len(x), 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding)
    for block in visual.transformer.resblocks:
        x = block(x)
    return visual.ln_post(x) @ visual.proj


def ref_attention_pool(pool, grid: torch.Tensor) -> torch.Tensor:
    """CLIP's attention pool written out, every token a query: ``(B, 1 + HW, D)``."""
    tokens = grid.flatten(2).transpose(1, 2)  # (B, HW, C)
    x = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.positional_embedding
    heads = pool.num_heads
    q, k, v = (proj(x).unflatten(-1, (heads, -1)).transpose(1, 2)
               for proj in (pool.q_proj, pool.k_proj, pool.v_proj))  # (B, h, L, d)
    weights = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    return pool.c_proj((weights @ v).transpose(1, 2).flatten(2))


def ref_plot_logits(clip, head: PLOTHead, images: torch.Tensor, task_info: TaskInfo, task: int,
                    eps: float = 0.1, max_iter: int = 100, thresh: float = 0.01) -> torch.Tensor:
    """PLOT's logits ``(B, K_t)`` of ``images`` against task ``task``'s classes, from scratch."""
    v = F.normalize(ref_vit_local(clip.visual, images)[:, 1:], dim=-1)  # (B, M, D)
    names = task_info.classnames[task]
    text = torch.stack([torch.stack([ref_text_feature(clip, f"{name}.", head.ctx[task, n])
                                     for name in names]) for n in range(head.ctx.shape[1])])
    text = F.normalize(text, dim=-1)  # (N, K, D)
    sim = torch.einsum("bmd,nkd->bkmn", v, text)
    plan = ref_sinkhorn(torch.exp(-(1 - sim.detach()) / eps).flatten(0, 1), max_iter, thresh)
    return clip.logit_scale.exp() * (plan.view_as(sim).float() * sim).sum((2, 3))


def bare_trainer(clip, task_info: TaskInfo, **keys) -> PLOT:
    """What PLOT's loss and logits need, without data or Dassl's build."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.PLOT.update({"N_PROMPTS": N_PROMPTS, "N_CTX": N_CTX, **keys})
    trainer = PLOT.__new__(PLOT)
    trainer.cfg, trainer.task_info, trainer.precision = cfg, task_info, "fp32"
    trainer.device = torch.device("cpu")
    trainer.task_of_class = torch.tensor(task_info.task_of_class)
    torch.manual_seed(0)
    trainer.model = MultiTaskCLIP(clip, PLOTHead.from_cfg(cfg.TRAINER.PLOT, clip, task_info))
    return trainer


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- keys
def test_plot_is_registered_with_its_keys():
    assert "PLOT" in TRAINER_REGISTRY.registered_names()
    cfg = get_cfg_default()
    extend_cfg(cfg)
    node = cfg.TRAINER.PLOT
    assert (node.N_PROMPTS, node.N_CTX, node.OT_EPS, node.OT_MAX_ITER, node.OT_THRESH, node.NAN_PLAN) == \
        (4, 16, 0.1, 100, 0.01, "error")
    check_plot_cfg(node)


@pytest.mark.parametrize("key, value, match", [
    ("NAN_PLAN", "skip", "NAN_PLAN is 'skip'.*error"), ("N_PROMPTS", 0, "N_PROMPTS is 0"),
    ("N_CTX", 0, "N_CTX is 0"), ("OT_EPS", 0.0, "OT_EPS is 0.0"), ("OT_THRESH", -1.0, "OT_THRESH"),
    ("OT_MAX_ITER", 0, "OT_MAX_ITER is 0"),
])
def test_bad_plot_settings_name_the_key(key, value, match):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.PLOT[key] = value
    with pytest.raises(ConfigError, match=match):
        check_plot_cfg(cfg.TRAINER.PLOT)


# ---------------------------------------------------------------- Sinkhorn
def kernels(p: int = 5, m: int = 7, n: int = 4, eps: float = 0.1) -> torch.Tensor:
    sim = torch.rand(p, m, n, generator=torch.Generator().manual_seed(1)) * 2 - 1  # cosines
    return torch.exp(-(1 - sim) / eps)


@pytest.mark.parametrize("max_iter, thresh", [(100, 0.01), (100, 1e-6), (3, 0.01)],
                         ids=["paper", "converged", "capped"])
def test_sinkhorn_is_the_plain_loop(max_iter, thresh):
    kernel = kernels()
    ours = sinkhorn(kernel, max_iter, thresh)
    # float32 against float64 over up to 100 rounds of sums of 4-7 terms: 1e-5 relative
    torch.testing.assert_close(ours.double(), ref_sinkhorn(kernel, max_iter, thresh), rtol=1e-5, atol=1e-9)


def test_sinkhorn_plan_has_the_uniform_marginals():
    kernel = kernels(m=9, n=4)
    converged = sinkhorn(kernel, 1000, 1e-9)
    torch.testing.assert_close(converged.sum(2), torch.full((5, 9), 1 / 9), rtol=1e-5, atol=0)
    torch.testing.assert_close(converged.sum(1), torch.full((5, 4), 1 / 4), rtol=1e-5, atol=0)
    # the paper's stop (change of r < 0.01): columns exact (c is scaled last), rows close
    plan = sinkhorn(kernel)
    torch.testing.assert_close(plan.sum(1), torch.full((5, 4), 1 / 4), rtol=1e-5, atol=0)
    assert float((plan.sum(2) - 1 / 9).abs().max()) < 0.05 / 9


# ---------------------------------------------------------------- local features
@pytest.fixture(scope="module")
def small_resnet():
    """open_clip's ModifiedResNet (RN50's classes) at small size: 64 px, a 2 x 2 grid."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=4, image_size=64, width=8).eval()


def test_resnet_local_features_are_the_attention_pool_of_every_token(small_resnet):
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = local_features(small_resnet, images)
        assert ours.shape == (3, 1 + 4, 32)
        assert torch.equal(ours[:, 0], small_resnet(images))  # output 0: CLIP's image feature
        r = small_resnet
        grid = r.layer4(r.layer3(r.layer2(r.layer1(r.stem(images)))))
        torch.testing.assert_close(ours, ref_attention_pool(r.attnpool, grid), rtol=1e-5, atol=1e-6)


def test_vit_local_features_are_the_projected_patch_tokens(any_clip, images):
    with torch.no_grad():
        ours = local_features(any_clip.visual, images)
        assert ours.shape == (6, 1 + 16, any_clip.visual.output_dim)  # 32 px in 8 px patches
        assert torch.equal(ours[:, 0], any_clip.visual(images))  # output 0: CLIP's image feature
        torch.testing.assert_close(ours, ref_vit_local(any_clip.visual, images), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- logits, loss, gradient
def test_logits_of_every_task_against_plain_plot(tiny_b16_clip, images):
    """More tasks than PREFIX_CHUNK, so several prefix chunks; each image against its own task."""
    assert TASKS_MANY.num_tasks > PREFIX_CHUNK
    trainer = bare_trainer(tiny_b16_clip, TASKS_MANY)
    labels = torch.tensor([1, 0, 21, 39, 38, 20])  # tasks 0, 0, 10, 19, 19, 10
    tasks = trainer.task_of_class[labels]
    with torch.no_grad():
        text = trainer.model.text_features()  # every class with every prompt: 80 prefixes
        ours = trainer.own_task_logits(trainer.encode_local(images), text, tasks, trainer.task_of_class, "x")
        for t in tasks.unique().tolist():
            rows, cols = tasks == t, trainer.task_of_class == t
            expected = ref_plot_logits(tiny_b16_clip, trainer.model.head, images[rows], TASKS_MANY, t)
            assert_close_rel(ours[rows][:, cols], expected)
    own = tasks[:, None] == trainer.task_of_class[None, :]
    assert torch.isinf(ours[~own]).all() and torch.isfinite(ours[own]).all()


def test_with_one_task_the_loss_and_gradient_are_plots_own(tiny_b16_clip, images):
    """The loss, and its gradient, which flows through the cosines only (the plan has none)."""
    trainer = bare_trainer(tiny_b16_clip, ONE_TASK)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    loss, _ = trainer.plot_loss(images, labels)
    head = trainer.model.head
    (ours,) = torch.autograd.grad(loss, head.ctx)
    expected = F.cross_entropy(ref_plot_logits(tiny_b16_clip, head, images, ONE_TASK, 0), labels)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(expected, head.ctx)
    # the text tower's 3 layers by another path (77 tokens, no shared prefix): 1e-5 of the largest
    torch.testing.assert_close(ours, grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))


# With the paper's threshold Sinkhorn runs until the plan barely moves. Threshold 10 stops it
# after 2 or 3 rounds, a number that depends on which images share the stopping test: it
# shows a test taken over the whole batch instead of over each task's images (3 rounds for
# task 0 alone here, 2 for the whole batch).
@pytest.mark.parametrize("thresh", [0.01, 10.0])
def test_each_tasks_gradient_is_its_share_of_its_own_run(tiny_b16_clip, images, thresh):
    """Joint batch of tasks 0 (3 images), 10 (2) and 19 (1) out of 20: the gradient of task t's
    contexts is n_t / B times that of PLOT run on task t alone on its n_t images."""
    trainer = bare_trainer(tiny_b16_clip, TASKS_MANY, OT_THRESH=thresh)
    labels = torch.tensor([1, 0, 21, 39, 0, 20])
    trainer.plot_loss(images, labels)[0].backward()
    joint = trainer.model.head.ctx.grad
    tasks = trainer.task_of_class[labels]
    for t in range(TASKS_MANY.num_tasks):
        rows = (tasks == t).nonzero().squeeze(1)
        if not len(rows):
            assert not joint[t].any()
            continue
        alone = bare_trainer(tiny_b16_clip, TaskInfo.single(f"task{t}", TASKS_MANY.classnames[t]),
                             OT_THRESH=thresh)
        with torch.no_grad():
            alone.model.head.ctx.copy_(trainer.model.head.ctx[t:t + 1])
        first = TASKS_MANY.task_of_class.index(t)
        alone.plot_loss(images[rows], labels[rows] - first)[0].backward()
        # the same sums in another order (one task's rows against the whole batch): 1e-5
        torch.testing.assert_close(joint[t], len(rows) / len(labels) * alone.model.head.ctx.grad[0],
                                   rtol=1e-5, atol=1e-5 * float(joint[t].abs().max()))


def test_learned_parameters_are_tasks_times_prompts_times_context(tiny_b16_clip):
    head = bare_trainer(tiny_b16_clip, TASKS_MANY, N_CTX=16).model.head
    learned = [p for p in head.parameters() if p.requires_grad]
    assert sum(p.numel() for p in learned) == 20 * 4 * 16 * 256  # T x N x N_CTX x width: 327,680
    assert head.per_task_keys == ("ctx",) and head.context_keys == ("ctx",)


def test_the_plan_and_logits_stay_fp32_under_autocast(tiny_clip, images):
    """PREC amp runs the towers under autocast; the cosines and the plan must not follow
    (on CPU autocast means bfloat16, whose 8 bits of mantissa would move the logits ~1e-2)."""
    trainer = bare_trainer(tiny_clip, ONE_TASK)
    with torch.no_grad():
        v, text = trainer.encode_local(images), trainer.model.text_features()
        expected = trainer.task_logits(v, text, "x")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = trainer.task_logits(v, text, "x")
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


# ---------------------------------------------------------------- a plan with NaN
def test_a_plan_with_nan_stops_naming_the_batch_or_falls_back_to_uniform(tiny_clip, images):
    """eps 1e-3: exp(-cost / eps) underflows to 0 in fp32 for every cost above ~0.1, and
    Sinkhorn divides by zero."""
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    trainer = bare_trainer(tiny_clip, ONE_TASK, OT_EPS=1e-3)
    with pytest.raises(TransportError, match=r"epoch 1, batch 1, task pets has NaN.*NAN_PLAN uniform"):
        trainer.plot_loss(images, labels)
    trainer = bare_trainer(tiny_clip, ONE_TASK, OT_EPS=1e-3, NAN_PLAN="uniform")
    with torch.no_grad():
        v, text = trainer.encode_local(images), trainer.model.text_features()
        logits = trainer.own_task_logits(v, text, torch.zeros(6, dtype=torch.long), trainer.task_of_class, "x")
        # the uniform plan 1 / (M N): logit_scale times the mean cosine over regions and prompts
        expected = tiny_clip.logit_scale.exp() * torch.einsum("bmd,nkd->bk", v, text) / (16 * N_PROMPTS)
    assert_close_rel(logits, expected)


# ---------------------------------------------------------------- end to end
@pytest.mark.slow  # trains and evaluates through train.main
def test_plot_learns_the_toy_tasks(toy_root, tmp_path):
    """2 shots, 10 epochs on the toy benchmark (seed 1 gave 52.2): well above chance (27.8),
    and the saved model alone gives the same score."""
    opts = ("DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "10")
    report = run_train(str(toy_root), tmp_path / "run", "PLOT", "tiny", *opts)
    assert report["trainer"] == "PLOT" and [t["key"] for t in report["tasks"]] == ["shapes", "colours", "stripes"]
    assert report["score"] > 27.8 + 10, report["score"]
    again = run_train(str(toy_root), tmp_path / "eval", "PLOT", "tiny", *opts,
                      flags=("--eval-only", "--model-dir", str(tmp_path / "run")))
    assert again["score"] == pytest.approx(report["score"])
