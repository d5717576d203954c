"""How a trainer evaluates (trainers/parts/evaluation.py): the image-feature source, the class text
features held for one evaluation, Dassl's test loop on features, results.json. A tiny linear
image encoder and a fake evaluator: no CLIP, no trainer, no training run."""
from __future__ import annotations

import json
import logging
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode as CN

from trainers.parts import evaluation

IMAGES = torch.arange(7 * 4, dtype=torch.float32).reshape(7, 4).sin()  # 7 "images" of 4 pixels
LABELS = [0, 2, 1, 1, 0, 2, 1]


class Item:
    def __init__(self, impath: str, label: int) -> None:
        self.impath, self.label = impath, label


class Images(Dataset):
    """Like Dassl's DatasetWrapper: a data source, a transform, {"img", "label"} items."""

    def __init__(self, root, transform) -> None:
        self.transform = transform
        self.data_source = [Item(str(root / f"{i}.png"), y) for i, y in enumerate(LABELS)]

    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, i: int) -> dict:
        return {"img": IMAGES[i], "label": LABELS[i]}


class Encoder(nn.Module):
    """What split_features uses of a MultiTaskCLIP: image_encoder and encode_image."""

    def __init__(self, conditional: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = nn.Linear(4, 3)
        self.head = nn.Module()
        self.head.conditional = conditional
        self.calls = 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.normalize(self.image_encoder(images), dim=-1)

    def text_features(self) -> torch.Tensor:
        return torch.eye(3)


def config(tmp_path, cache: bool = True) -> CN:
    cfg = CN()
    cfg.TEST = CN({"FEATURE_CACHE": cache, "FEATURE_CACHE_DIR": str(tmp_path / "features")})
    cfg.DATASET = CN({"NAME": "Toy", "ROOT": str(tmp_path), "NUM_SHOTS": 16})
    cfg.INPUT = CN({"SIZE": [2, 2], "INTERPOLATION": "bicubic", "PIXEL_MEAN": [0.5], "PIXEL_STD": [0.5]})
    cfg.MODEL = CN({"BACKBONE": CN({"NAME": "tiny", "PRETRAINED_TAG": ""})})
    cfg.TRAINER = CN({"NAME": "SoftCPT"})
    cfg.CONFIG_NAME, cfg.SEED = "tiny", 1
    return cfg


def loader(tmp_path, transform=None) -> DataLoader:
    # Shuffled, as a training loader would be: the features still come in data-source order.
    return DataLoader(Images(tmp_path, transform or T.Normalize([0.5], [0.5])), batch_size=3,
                      shuffle=True)


def expected(model: Encoder) -> torch.Tensor:
    with torch.no_grad():
        w, b = model.image_encoder.weight, model.image_encoder.bias
        rows = [IMAGES[i] @ w.t() + b for i in range(len(LABELS))]
        return torch.stack([r / r.norm() for r in rows])


def test_features_without_the_cache_come_in_data_source_order(tmp_path):
    model, before = Encoder(), torch.get_rng_state()
    feats, labels = evaluation.split_features(model, loader(tmp_path), "test", config(tmp_path, False),
                                              torch.device("cpu"), "fp32")
    assert labels.tolist() == LABELS and model.calls == 3  # ceil(7 / 3) batches
    torch.testing.assert_close(feats, expected(model), rtol=0, atol=1e-6)  # fp32 rounding of 4 terms
    assert torch.equal(torch.get_rng_state(), before)  # encoding draws nothing from the training's
    assert not (tmp_path / "features").exists()


def test_features_are_encoded_once_then_read_from_the_cache(tmp_path):
    first, again = Encoder(), Encoder()
    cfg, cpu = config(tmp_path), torch.device("cpu")
    feats, labels = evaluation.split_features(first, loader(tmp_path), "test", cfg, cpu, "fp32")
    assert first.calls == 3 and len(list((tmp_path / "features").glob("Toy-test-*.pt"))) == 1
    stored, stored_labels = evaluation.split_features(again, loader(tmp_path), "test", cfg, cpu, "fp32")
    assert again.calls == 0 and torch.equal(stored, feats) and stored_labels.tolist() == LABELS
    evaluation.split_features(again, loader(tmp_path), "val", cfg, cpu, "fp32")
    assert again.calls == 3  # another split, another file


def test_a_random_transform_is_encoded_every_time_and_never_stored(tmp_path, caplog):
    logging.disable(logging.NOTSET)  # Dassl disables WARNING records when imported
    model = Encoder()
    with caplog.at_level(logging.WARNING, logger="trainers.parts.evaluation"):
        evaluation.split_features(model, loader(tmp_path, T.RandomHorizontalFlip()), "val",
                                  config(tmp_path), torch.device("cpu"), "fp32")
    assert "The val transform is random: its image features are not cached." in caplog.text
    assert model.calls == 3 and not (tmp_path / "features").exists()


def test_class_text_features_are_held_only_for_heads_that_do_not_read_the_image():
    assert torch.equal(evaluation.class_text_features(Encoder(), cache=True), torch.eye(3))
    assert evaluation.class_text_features(Encoder(), cache=False) is None
    assert evaluation.class_text_features(Encoder(conditional=True), cache=True) is None


class Evaluator:
    """Records what the loop gives it; its results are the number of images seen."""

    def __init__(self) -> None:
        self.events = []

    def reset(self) -> None:
        self.events.append("reset")

    def process(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.events.append((logits.clone(), labels.tolist()))

    def evaluate(self) -> OrderedDict:
        return OrderedDict(accuracy=float(sum(len(e[1]) for e in self.events[1:])), other=1.0)


def test_the_test_loop_scores_every_batch_of_features(tmp_path, capsys):
    feats = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    head = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # a tiny linear head: 3 classes
    seen = []

    def features(data, split):
        seen.append((data, split))
        return feats, torch.tensor(LABELS)

    evaluator, data = Evaluator(), loader(tmp_path)
    results = evaluation.evaluate_split(evaluator, data, "val", features, lambda u, y: u @ head.t(),
                                        torch.device("cpu"))
    assert "Evaluate on the *val* set" in capsys.readouterr().out
    assert seen == [(data, "val")] and results == OrderedDict(accuracy=7.0, other=1.0)
    assert evaluator.events[0] == "reset" and [e[1] for e in evaluator.events[1:]] == [
        LABELS[0:3], LABELS[3:6], LABELS[6:7]]  # the loader's batch size, in order
    for i, (logits, _) in enumerate(evaluator.events[1:]):
        rows = feats[3 * i:3 * i + 3]
        assert torch.equal(logits, torch.stack([rows[:, 0], rows[:, 1], rows.sum(1)], dim=1))


def test_results_report_records_the_run_after_the_scores(tmp_path):
    cfg = config(tmp_path)
    setting = evaluation.training_setting(CN({"PREC": "fp16", "STEPS_PER_BATCH": 2}), None)
    assert setting == {"prec": "fp16", "param_dtype": "fp32", "steps_per_batch": 2}
    assert evaluation.training_setting(CN({"PREC": "fp16"}), "fp32")["prec"] == "fp32"
    report = evaluation.results_report(cfg, {"score": 50.0, "total": 4}, "test", 4, None,
                                       {"SEED": 1}, setting)
    assert report == {"score": 50.0, "total": 4, "trainer": "SoftCPT", "dataset": "Toy",
                      "config": "tiny", "backbone": "tiny", "shots": 16, "seed": 1, "split": "test",
                      "epoch": 5, "subsample_classes": "all", "resumed_from_epoch": None,
                      "effective_config": {"SEED": 1}, "prec": "fp16", "param_dtype": "fp32",
                      "steps_per_batch": 2}
    assert list(report) == ["score", "total", "trainer", "dataset", "config", "backbone", "shots",
                            "seed", "split", "epoch", "subsample_classes", "resumed_from_epoch",
                            "effective_config", "prec", "param_dtype", "steps_per_batch"]
    assert evaluation.results_report(cfg, {}, "val", -1, 3, {}, {})["epoch"] is None


def test_results_files_are_named_by_split_and_written_as_indented_json(tmp_path):
    path = evaluation.write_results(str(tmp_path), "test", {"score": 50.0, "tasks": [1]})
    assert path == str(tmp_path / "results.json")
    assert (tmp_path / "results.json").read_text() == '{\n  "score": 50.0,\n  "tasks": [\n    1\n  ]\n}'
    evaluation.write_results(str(tmp_path), "val", {"score": 1.0})
    assert json.loads((tmp_path / "results_val.json").read_text()) == {"score": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results_val.json"]


@pytest.mark.parametrize("split", ["test", "val"])
def test_results_name(split):
    assert evaluation.results_name(split) == {"test": "results.json", "val": "results_val.json"}[split]


def test_run_costs_count_what_the_optimizers_update_once_each():
    """#params: the elements of the parameters in the optimizers' groups (a parameter two
    optimizers or groups hold counts once); frozen parameters outside them do not count."""
    head = nn.Linear(3, 2)  # 3 * 2 + 2 = 8 elements
    other = nn.Parameter(torch.zeros(5))
    frozen = nn.Parameter(torch.zeros(100), requires_grad=False)  # never given to an optimizer
    first = torch.optim.SGD([{"params": [head.weight]}, {"params": [head.bias, other]}], lr=0.1)
    second = torch.optim.SGD([head.weight], lr=0.1)  # the weight again
    assert frozen.numel() == 100
    costs = evaluation.run_costs([first, None, second], {"seconds": 12.5, "device": "cpu"})
    assert costs == {"learnable_params": 6 + 2 + 5, "train_seconds": 12.5, "train_device": "cpu"}
    # No optimizer (zero-shot CLIP): no count; not measured: no time.
    assert evaluation.run_costs([None], None) == {"learnable_params": None, "train_seconds": None,
                                                  "train_device": None}
    report = evaluation.results_report(config_for_costs(), {"score": 1.0}, "test", 0, None, {}, {}, costs)
    assert list(report)[-3:] == ["learnable_params", "train_seconds", "train_device"]


def config_for_costs():
    return CN({"TRAINER": CN({"NAME": "CoOp"}), "DATASET": CN({"NAME": "Toy", "NUM_SHOTS": 1}),
               "CONFIG_NAME": "tiny", "MODEL": CN({"BACKBONE": CN({"NAME": "tiny"})}), "SEED": 1})


def test_a_resumed_run_goes_on_from_the_recorded_training_time():
    from trainers.parts.base import resumed_train_time
    assert resumed_train_time({"seconds": 30.0, "device": "cpu"}, {"seconds": 0.0, "device": "cpu"}) == \
        {"seconds": 30.0, "device": "cpu"}
    assert resumed_train_time({"seconds": 30.0, "device": "cpu"}, {"seconds": 0.0, "device": "NVIDIA H100"}) \
        == {"seconds": 30.0, "device": "cpu + NVIDIA H100"}
    assert resumed_train_time({"seconds": 30.0, "device": "cpu + NVIDIA H100"},
                              {"seconds": 0.0, "device": "cpu"})["device"] == "cpu + NVIDIA H100"
    assert resumed_train_time(None, {"seconds": 0.0, "device": "cpu"}) is None  # an older checkpoint
