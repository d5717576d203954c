"""Reading learned prompts: nearest words (scripts/interpret_prompt.py), generated contexts and the
task-similarity matrix (trainers/parts/interpret.py)."""
from __future__ import annotations

import csv
import os
import sys

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("dassl", reason="Dassl is not installed")

from open_clip.tokenizer import SimpleTokenizer  # noqa: E402

from coop_files import write_coop_checkpoint  # noqa: E402
from trainers.parts import interpret  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import interpret_prompt  # noqa: E402

BPE = SimpleTokenizer()


def bpe_word(token_id: int) -> str:
    return BPE.decoder[token_id].replace("</w>", "")


def word_ids(words: str) -> list[int]:
    return BPE.encode(words)


@pytest.fixture
def clip_loads(monkeypatch, tiny_clip):
    """load_clip returns the session's tiny CLIP and records the backbone it was asked for."""
    asked = []

    def fake(name, tag="", precision="fp32", device="cpu", pretrained=True):
        asked.append((name, tag))
        return tiny_clip
    monkeypatch.setattr("trainers.parts.backbone.load_clip", fake)
    return asked


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ nearest words
def test_nearest_words_by_euclidean_distance_in_a_small_vocabulary():
    """An 8-row vocabulary (a model smaller than CLIP's BPE): ids decode, order and distances hold."""
    gen = torch.Generator().manual_seed(0)
    embedding = torch.randn(8, 6, generator=gen)
    vectors = embedding[[5, 2]] + 0.01 * torch.randn(2, 6, generator=gen)
    dist, ids = interpret.nearest_words(vectors, embedding, k=3)
    expected = np.linalg.norm(vectors.numpy()[:, None] - embedding.numpy()[None], axis=-1)  # (2, 8)
    assert ids.tolist() == np.argsort(expected, axis=1)[:, :3].tolist()
    assert np.allclose(dist.numpy(), np.sort(expected, axis=1)[:, :3], atol=1e-5)
    assert ids[:, 0].tolist() == [5, 2]
    rows = interpret.interpret_rows([("context (shared)", "", vectors)], embedding, k=10)
    assert len(rows) == 2 * 8  # k is capped at the vocabulary size
    assert [r["word"] for r in rows if r["rank"] == 1] == [bpe_word(5), bpe_word(2)]
    assert interpret.decode_token(10 ** 6) == "<id 1000000>"  # beyond the BPE: still a label


def test_a_checkpoint_of_coops_own_code_reads_with_the_backbone_of_its_log(tmp_path, tiny_clip,
                                                                           clip_loads):
    """CoOp's run: output/.../prompt_learner/model.pth.tar-50 with state_dict['ctx'] and a log.txt
    whose config dump names the backbone; the context is 'a photo of a' word for word."""
    ids = word_ids("a photo of a")
    ctx = tiny_clip.token_embedding.weight[ids].detach().clone()
    run = tmp_path / "coop" / "seed1"
    (run / "prompt_learner").mkdir(parents=True)
    # written by Dassl's save_checkpoint, with CoOp's warm-up scheduler (its successor pickled)
    write_coop_checkpoint(str(run / "prompt_learner"), {
        "ctx": ctx, "token_prefix": torch.zeros(3, 1, 64), "token_suffix": torch.zeros(3, 72, 64)})
    (run / "log.txt").write_text("** Arguments **\ntrainer: CoOp\n************\n** Config **\n"
                                 "************\nMODEL:\n  BACKBONE:\n    NAME: RN50\n    PRETRAINED: True\n"
                                 "  HEAD:\n    NAME: \nOPTIM:\n  LR: 0.002\nTRAINER:\n  NAME: CoOp\n"
                                 "Collecting env info ...\n")
    out = interpret_prompt.main([str(run / "prompt_learner" / "model.pth.tar-50"), "--topk", "2",
                                 "--csv", str(tmp_path / "words.csv")])
    assert clip_loads == [("RN50", "")]  # the recorded backbone
    rows = read_csv(out)
    firsts = [r for r in rows if r["rank"] == "1"]
    assert [r["word"] for r in firsts] == ["a", "photo", "of", "a"]
    assert all(float(r["distance"]) < 1e-4 for r in firsts)
    assert {r["context"] for r in rows} == {"context (shared)"}
    interpret_prompt.main([str(run / "prompt_learner" / "model.pth.tar-50"), "--backbone", "ViT-B/16",
                           "--csv", str(tmp_path / "w2.csv")])
    assert clip_loads[-1] == ("ViT-B/16", "")  # --backbone overrides the record


class Foreign:
    """An object of a class no checkpoint of CoOp, Dassl or this project pickles."""

    opened = False

    def __setstate__(self, state) -> None:
        Foreign.opened = True


def test_a_foreign_class_and_a_truncated_file_are_told_apart(tmp_path, clip_loads):
    run = tmp_path / "run"
    path = write_coop_checkpoint(str(run / "prompt_learner"), {"ctx": torch.zeros(4, 64)}, 5)
    good = open(path, "rb").read()
    state = torch.load(path, weights_only=False)  # this test's own file: safe to unpickle
    state["args"] = Foreign()
    torch.save(state, path)
    with pytest.raises(interpret_prompt.InterpretError) as err:
        interpret_prompt.main([path, "--backbone", "tiny"])
    message = str(err.value)
    assert message.startswith(f"{path} holds a pickled object of class ")
    assert "test_interpret.Foreign, which is not read" in message and "truncated" not in message
    assert "weights_only" not in message and "\n" not in message and not Foreign.opened
    open(path, "wb").write(good[: len(good) // 2])  # what an interrupted copy leaves
    with pytest.raises(interpret_prompt.InterpretError) as err:
        interpret_prompt.main([path, "--backbone", "tiny"])
    assert str(err.value).startswith(f"cannot read {path} (")
    assert str(err.value).endswith("the file is truncated or not a checkpoint")
    assert clip_loads == []  # both refused before the backbone is loaded


def test_a_checkpoint_without_a_recorded_backbone_asks_for_one(tmp_path, clip_loads):
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 64)}, "epoch": 5}, path)
    with pytest.raises(interpret_prompt.InterpretError, match="--backbone"):
        interpret_prompt.main([str(path)])
    with pytest.raises(interpret_prompt.InterpretError, match="prompt_learner"):
        interpret_prompt.main([str(tmp_path)])


def test_coop_per_task_and_per_class_contexts_are_named(tmp_path, tiny_clip, clip_loads):
    emb = tiny_clip.token_embedding.weight.detach()
    cat, dog = word_ids("cat")[0], word_ids("dog")[0]
    for classes, per in ((["x", "y", "z"], "class"), (["x", "y", "z", "w"], "task")):
        n = 3  # 3 contexts: per class with 3 classes, per task with 3 tasks of 4 classes
        ctx = torch.stack([emb[[cat, dog]], emb[[dog, cat]], emb[[cat, cat]]])  # (3, 2, W)
        path = tmp_path / f"{per}.pth"
        torch.save({"state_dict": {"ctx": ctx}, "epoch": 1, "trainer": "CoOp", "variant": None,
                    "task_keys": ["t0", "t1", "t2"][: n if per == "task" else 2],
                    "classnames": classes}, path)
        rows = read_csv(interpret_prompt.main([str(path), "--backbone", "tiny", "--topk", "1",
                                               "--csv", str(tmp_path / f"{per}.csv")]))
        owners = ["t0", "t1", "t2"] if per == "task" else classes
        assert [(r["context"], r["owner"], r["word"]) for r in rows] == [
            (f"context (per {per})", o, w) for o, pair in zip(owners, (("cat", "dog"), ("dog", "cat"),
                                                                      ("cat", "cat"))) for w in pair]


# ------------------------------------------------------------------ SoftCPT's generated contexts
def softcpt_run(tmp_path, tiny_clip, variant="NATA"):
    """A SoftCPT run folder: checkpoint at epoch 3, a log with the config, generated_contexts.pt."""
    from dassl.config import get_cfg_default

    from datasets.task_info import TaskInfo
    from config import extend_cfg
    from config.softcpt import resolve_variant
    from trainers.softcpt import SoftCPTHead

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.NAME = "SoftCPT"
    cfg.MODEL.BACKBONE.NAME = "tiny"
    cfg.TRAINER.SOFTCPT.VARIANT = variant
    cfg = resolve_variant(cfg)
    info = TaskInfo(("shapes", "colours", "stripes"), ("shape recognition", "colour recognition",
                                                      "stripe orientation recognition"),
                    (("circle", "square"), ("red", "blue"), ("vertical",)), ("overall_acc",) * 3)
    torch.manual_seed(0)
    head = SoftCPTHead.from_cfg(cfg, tiny_clip, info)
    with torch.no_grad():
        head.meta_net.weight.zero_()  # G = 0: every generated vector is the zero vector
    run = tmp_path / "softcpt"
    (run / "prompt_learner").mkdir(parents=True)
    torch.save({"state_dict": head.state_dict(), "epoch": 3, "trainer": "SoftCPT", "variant": variant,
                "task_keys": list(info.keys), "classnames": info.all_classnames},
               run / "prompt_learner" / "model.pth.tar-3")
    (run / "log.txt").write_text("** Config **\n************\n" + str(cfg) + "\nCollecting env info\n")
    # the saved tensors are of another epoch (all 'photo'): the script must rebuild them from epoch 3
    photo = tiny_clip.token_embedding.weight[word_ids("photo")[0]].detach()
    saved = photo.expand(3, head.n_ctx, -1).clone()
    interpret.save_generated(str(run / interpret.GENERATED_FILE), saved, info.keys, info.names,
                             [30.0, 40.0, 50.0], 2, cfg.dump(), classnames=info.classnames,
                             metrics=info.metrics, templates=info.templates)
    return run, head


def test_softcpt_contexts_learned_and_generated_at_the_checkpoints_epoch(tmp_path, tiny_clip, clip_loads):
    run, head = softcpt_run(tmp_path, tiny_clip)
    out = interpret_prompt.main([str(run), "--topk", "2"])
    assert out == os.path.join(run, "nearest_words_epoch3.csv")  # the default CSV, named by epoch
    rows = read_csv(out)
    assert clip_loads[-1] == ("tiny", "")
    emb = tiny_clip.token_embedding.weight.detach().numpy()
    by_norm = np.argsort(np.linalg.norm(emb, axis=1))[:2]  # nearest to the zero vector
    generated = [r for r in rows if r["context"] == "generated context"]
    assert {r["owner"] for r in generated} == {"shapes: shape recognition", "colours: colour recognition",
                                               "stripes: stripe orientation recognition"}
    assert len(generated) == 3 * head.n_ctx * 2
    assert [int(r["token_id"]) for r in generated[:2]] == by_norm.tolist()
    task = [r for r in rows if r["context"] == "task context (shared)" and r["rank"] == "1"]
    want = np.linalg.norm(head.task_ctx.detach().numpy()[:, None] - emb[None], axis=-1).argmin(1)
    assert [int(r["token_id"]) for r in task] == want.tolist()


def test_a_damaged_generated_contexts_file_is_a_note_and_the_learned_contexts_are_shown(
        tmp_path, tiny_clip, clip_loads, capsys):
    run, head = softcpt_run(tmp_path, tiny_clip)
    generated = run / interpret.GENERATED_FILE
    generated.write_bytes(generated.read_bytes()[:300])
    rows = read_csv(interpret_prompt.main([str(run), "--topk", "1"]))
    assert {r["context"] for r in rows} == {"task context (shared)"}
    assert (f"note: cannot read {generated} (RuntimeError): the file is truncated or not a "
            "generated-contexts file; the generated contexts are not shown") in capsys.readouterr().out


def test_softcpt_class_aware_variant_shows_class_context_and_per_class_generation(tmp_path, tiny_clip,
                                                                                 clip_loads):
    run, head = softcpt_run(tmp_path, tiny_clip, variant="CSTA")
    rows = read_csv(interpret_prompt.main([str(run), "--topk", "1", "--per-class"]))
    kinds = {}
    for r in rows:
        kinds.setdefault(r["context"], set()).add(r["owner"])
    assert kinds["class context (per class)"] == {"circle", "square", "red", "blue", "vertical"}
    assert kinds["generated context (per class)"] == {"circle", "square", "red", "blue", "vertical"}
    assert len(kinds["generated context (mean over the task's classes)"]) == 3
    assert "task context (shared)" in kinds


def test_text_output_lists_every_position(tmp_path, tiny_clip, clip_loads, capsys):
    run, head = softcpt_run(tmp_path, tiny_clip)
    interpret_prompt.main([str(run), "--topk", "3", "--csv", str(tmp_path / "x.csv")])
    text = capsys.readouterr().out
    assert "trainer SoftCPT, variant NATA, epoch 3, backbone tiny" in text
    block = text.split("generated context [colours: colour recognition]:\n")[1].split("\n")
    assert [line.split(":")[0].strip() for line in block[:head.n_ctx]] == \
        [str(i) for i in range(1, head.n_ctx + 1)]
    assert block[0].count("(") == 3


# ------------------------------------------------------------------ task similarity
def test_similarity_is_the_cosine_and_the_order_puts_alike_tasks_together():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    contexts = torch.stack([a, b, 2 * a + 0.01 * b, -b + 0.01 * a, b + 0.02 * a])  # 0~2, 1~4, 3 = -1
    sim = interpret.task_similarity(contexts)
    flat = contexts.flatten(1).numpy()
    want = flat @ flat.T / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    assert np.allclose(sim, want, atol=1e-5)
    order = interpret.cluster_order(sim)
    assert sorted(order) == list(range(5))
    pos = {t: i for i, t in enumerate(order)}
    assert abs(pos[0] - pos[2]) == 1 and abs(pos[1] - pos[4]) == 1


def test_similarity_csv_has_scores_beside_names_in_cluster_order(tmp_path):
    contexts = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.1]]])
    keys, names = ["a", "b", "c"], ["task a", "task b", "task c"]
    written = interpret.write_similarity(str(tmp_path / "sim"), interpret.task_similarity(contexts),
                                         keys, names, [10.0, 20.0, 30.0])
    assert written == [str(tmp_path / "sim.csv"), str(tmp_path / "sim.png")]
    rows = read_csv(tmp_path / "sim.csv")
    order = [r["key"] for r in rows]
    assert abs(order.index("a") - order.index("c")) == 1
    assert list(rows[0])[4:] == order  # columns in the same order as the rows
    for r in rows:
        assert float(r["score"]) == {"a": 10.0, "b": 20.0, "c": 30.0}[r["key"]]
        assert float(r[r["key"]]) == pytest.approx(1.0)


def benchmark_names(name: str) -> list[str]:
    """Task names of a benchmark config: NAME, else the member dataset's own task name."""
    from dassl.data.datasets import DATASET_REGISTRY

    import datasets  # noqa: F401  (registers the members)
    with open(os.path.join(REPO, "configs", "datasets", f"{name}.yaml")) as f:
        tasks = yaml.safe_load(f)["DATASET"]["MULTITASK"]["TASKS"]
    return [t.get("NAME") or DATASET_REGISTRY.get(t["MEMBER"]).task_name for t in tasks]


@pytest.mark.parametrize("bench, n", [("toy", 3), ("general10", 10), ("fashion20", 20)])
def test_heatmap_labels_are_legible_for_the_benchmarks_names(bench, n):
    """No two tick labels overlap and all lie inside the figure, for 3, 10 and 20 tasks."""
    import matplotlib.pyplot as plt
    names = benchmark_names(bench)
    assert len(names) == n
    gen = torch.Generator().manual_seed(n)
    sim = interpret.task_similarity(torch.randn(n, 4, 16, generator=gen))
    labels = interpret.task_labels(names, names, [50.0 + i for i in range(n)])
    fig = interpret.draw_similarity(sim, interpret.cluster_order(sim), labels)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        width, height = fig.bbox.width, fig.bbox.height
        for ticks, axis in ((ax.get_xticklabels(), 0), (ax.get_yticklabels(), 1)):
            boxes = [t.get_window_extent(renderer) for t in ticks]
            assert len(boxes) == n and all(t.get_text() for t in ticks)
            for box in boxes:
                assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1
            if axis == 1:  # rows: stacked, must not overlap vertically
                spans = sorted((b.y0, b.y1) for b in boxes)
                assert all(lo1 >= hi0 - 0.5 for (_, hi0), (lo1, _) in zip(spans, spans[1:]))
            # one label per cell, each cell at least twice the text height: room between lines
            cell = abs(ax.transData.transform((1, 1))[axis] - ax.transData.transform((0, 0))[axis])
            font = max(t.get_fontsize() for t in ticks) * fig.dpi / 72
            assert cell >= 2 * font, (bench, axis, cell, font)
        assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 7
    finally:
        plt.close(fig)


def test_cocoop_context_is_per_task_even_with_one_class_per_task(tmp_path, tiny_clip, clip_loads):
    emb = tiny_clip.token_embedding.weight.detach()
    cat = word_ids("cat")[0]
    path = tmp_path / "cocoop.pth"
    torch.save({"state_dict": {"ctx": emb[[cat]].expand(2, 3, -1).clone(),
                               "meta_nets.0.linear1.weight": torch.zeros(2, 32)},
                "epoch": 1, "trainer": "CoCoOp", "classnames": ["a", "b"]}, path)  # no task keys recorded
    rows = read_csv(interpret_prompt.main([str(path), "--backbone", "tiny", "--topk", "1",
                                           "--csv", str(tmp_path / "c.csv")]))
    assert {(r["context"], r["owner"], r["word"]) for r in rows} == {
        ("context (per task)", "task 0", "cat"), ("context (per task)", "task 1", "cat")}


def test_saved_contexts_are_shown_only_for_their_own_epoch_when_the_head_cannot_be_rebuilt(
        tmp_path, tiny_clip, clip_loads, capsys):
    run, head = softcpt_run(tmp_path, tiny_clip)
    path = str(run / interpret.GENERATED_FILE)
    state = interpret.load_generated(path)
    state["config"] = "TRAINER:\n  NO_SUCH_NODE: 1\n"  # a config this version cannot merge
    torch.save(state, path)
    rows = read_csv(interpret_prompt.main([str(run), "--topk", "1", "--csv", str(tmp_path / "a.csv")]))
    assert "could not be rebuilt for epoch 3" in capsys.readouterr().out
    assert not [r for r in rows if r["context"].startswith("generated")]  # saved at epoch 2: not shown
    state["epoch"] = 3
    torch.save(state, path)
    rows = read_csv(interpret_prompt.main([str(run), "--topk", "1", "--csv", str(tmp_path / "b.csv")]))
    assert "generated contexts read from" in capsys.readouterr().out
    generated = [r for r in rows if r["context"] == "generated context"]
    assert len(generated) == 3 * head.n_ctx and {r["word"] for r in generated} == {"photo"}
