"""Bad input: each message names the path or key and the DATASETS.md section; nothing is written."""
from __future__ import annotations

import logging
import os
import re
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.data.datasets import DATASET_REGISTRY  # noqa: E402
from fixtures_data import GENERAL10 as LAYOUTS, make_dataset_cfg, write_image_folder  # noqa: E402

import datasets  # noqa: E402,F401  (registers the datasets)
from datasets.errors import DatasetError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GENERAL10 = str(REPO / "configs" / "datasets" / "general10.yaml")
GENERAL10_NAMES = {name: layout.stored_names for name, layout in LAYOUTS.items()}


def files_under(root: str) -> dict[str, float]:
    """Every file and folder with its mtime: compared before and after a failing build."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in dirnames + files:
            path = os.path.join(dirpath, name)
            out[path] = os.stat(path).st_mtime_ns
    return out


def fails_without_writing(root: str, cfg, *patterns: str) -> DatasetError:
    """Building fails with a DatasetError matching every pattern, and the tree is unchanged."""
    before = files_under(root)
    with pytest.raises(DatasetError) as info:
        DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in: {message}"
    assert re.search(r"see DATASETS\.md#[a-z0-9-]+\)$", message), message
    assert files_under(root) == before
    return info.value


def yaml_file(tmp_path, text: str) -> str:
    path = tmp_path / "bench.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_missing_member_folder(general10_root):
    root, fakes = general10_root
    import shutil
    shutil.rmtree(fakes["EuroSAT"].dataset_dir)
    cfg = make_dataset_cfg(root, yaml=GENERAL10, shots=1)
    fails_without_writing(root, cfg, r"TASKS\[2\]", re.escape(os.path.join(root, "eurosat")),
                          r"DATASETS\.md#eurosat")


def test_missing_split_file_offers_download(general10_root):
    root, fakes = general10_root
    os.remove(os.path.join(fakes["OxfordPets"].dataset_dir, "split_zhou_OxfordPets.json"))
    alone = make_dataset_cfg(root, "OxfordPets", shots=1)
    for cfg in (alone, make_dataset_cfg(root, yaml=GENERAL10, shots=1)):
        fails_without_writing(root, cfg, r"split_zhou_OxfordPets\.json",
                              r"python scripts/download_splits\.py --root \S+ --datasets OxfordPets",
                              r"DATASETS\.md#oxfordpets")


@pytest.mark.filterwarnings("ignore:No file found")  # Dassl's own warning, before our error
def test_image_listed_in_split_but_missing(general10_root):
    root, fakes = general10_root
    rel = fakes["UCF101"].split["test"][0][0]
    os.remove(os.path.join(fakes["UCF101"].dataset_dir, "UCF-101-midframes", rel))
    fails_without_writing(root, make_dataset_cfg(root, "UCF101", shots=1), re.escape(rel),
                          r"split_zhou_UCF101\.json", r"#ucf101")


def edit_split_row(fake, part: str, index: int, column: int, value) -> list:
    """Set ``column`` (1: label, 2: class name) of one row of a fake dataset's split file;
    returns the row as now written."""
    import json
    layout_file = os.path.join(fake.dataset_dir, f"split_zhou_{fake.name}.json")
    with open(layout_file) as f:
        split = json.load(f)
    row = split[part][index]
    row[column] = value
    with open(layout_file, "w") as f:
        json.dump(split, f)
    return row


@pytest.mark.parametrize("label", [3, 150, -1])
def test_split_label_outside_the_files_classes_is_refused(general10_root, label):
    """Caltech101's fake split has 3 classes; in General-10, label 3 would be DescribableTextures'
    first class (task 1) and the image scored there."""
    root, fakes = general10_root
    row = edit_split_row(fakes["Caltech101"], "test", 4, 1, label)
    for cfg in (make_dataset_cfg(root, "Caltech101", shots=1),
                make_dataset_cfg(root, yaml=GENERAL10, shots=1)):
        fails_without_writing(root, cfg, r"split file \S+split_zhou_Caltech101\.json: test\[4\]",
                              re.escape(repr(row)), rf"label {label}, outside 0\.\.2 \(its 3 class names\)",
                              r"#caltech101\)$")


def test_split_label_of_another_class_is_refused(general10_root):
    root, fakes = general10_root
    fake = fakes["OxfordPets"]
    _, label, name = fake.split["val"][2]
    other = (label + 1) % 3
    row = edit_split_row(fake, "val", 2, 1, other)
    fails_without_writing(root, make_dataset_cfg(root, "OxfordPets", shots=1),
                          r"split_zhou_OxfordPets\.json: val\[2\]", re.escape(repr(row)),
                          rf"has label {other}, but class {name!r} is label {label} at train\[\d+\]",
                          r"#oxfordpets\)$")


def test_split_class_name_of_another_label_is_refused(general10_root):
    root, fakes = general10_root
    fake = fakes["EuroSAT"]
    _, label, name = fake.split["test"][0]
    other = [n for n in GENERAL10_NAMES["EuroSAT"] if n != name][0]
    row = edit_split_row(fake, "test", 0, 2, other)
    # The other class's name is known with its own label first, so that is what the row contradicts.
    fails_without_writing(root, make_dataset_cfg(root, "EuroSAT", shots=1),
                          r"split_zhou_EuroSAT\.json: test\[0\]", re.escape(repr(row)),
                          rf"has label {label}, but class {other!r} is label \d+ at train\[\d+\]")


def test_split_class_name_never_seen_for_a_known_label_is_refused(general10_root):
    """A renamed class (a typo in one row): its label is known under its first name."""
    root, fakes = general10_root
    fake = fakes["EuroSAT"]
    _, label, name = fake.split["test"][0]
    row = edit_split_row(fake, "test", 0, 2, name + "s")
    fails_without_writing(root, make_dataset_cfg(root, "EuroSAT", shots=1),
                          r"split_zhou_EuroSAT\.json: test\[0\]", re.escape(repr(row)),
                          rf"has label {label}, which is class {name!r} at train\[\d+\], not {name + 's'!r}")


@pytest.mark.parametrize("label", ["1", 1.0, True, None])
def test_split_label_that_is_not_an_integer_is_refused(general10_root, label):
    root, fakes = general10_root
    row = edit_split_row(fakes["DescribableTextures"], "train", 1, 1, label)
    fails_without_writing(root, make_dataset_cfg(root, "DescribableTextures", shots=1),
                          r"split_zhou_DescribableTextures\.json: train\[1\] is " + re.escape(repr(row)),
                          r"not \[relative path, integer label, class name\]")


def test_benchmark_refuses_a_member_label_beyond_its_tasks_classes(general10_root, monkeypatch):
    """The second guard, for members that read no split file: with the split file's check
    skipped, MultiTask still refuses a label that would fall into the next task."""
    import datasets.splits
    root, fakes = general10_root
    monkeypatch.setattr(datasets.splits, "check_split_labels", lambda *args: None)
    row = edit_split_row(fakes["Caltech101"], "test", 4, 1, 3)
    image = os.path.join(fakes["Caltech101"].dataset_dir, "101_ObjectCategories", row[0])
    cfg = make_dataset_cfg(root, yaml=GENERAL10, shots=1)
    with pytest.raises(DatasetError) as info:  # after the members' few-shot draws, which are kept
        DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
    assert str(info.value) == (f"DATASET.MULTITASK.TASKS[0] (Caltech101): test image {image} has label 3, "
                               "outside the task's classes 0..2 (see DATASETS.md#your-own-benchmark)")


def test_image_folder_giving_two_classes_one_name_is_refused_before_its_split_is_written(data_root):
    """What a written split file would be refused for at the next read is refused at once."""
    write_image_folder(data_root, "pics", ["apple", "Apple_"], 4)
    cfg = make_dataset_cfg(data_root, "ImageFolder", shots=1, DATASET__IMAGE_FOLDER__DIR="pics")
    fails_without_writing(data_root, cfg, r"split file \S+pics/split_imagefolder\.json: \w+\[\d+\]",
                          r"has label 1, outside 0\.\.0 \(its 1 class names\); 2 labels share these 1 "
                          r"names: give every class its own name", r"#image-folders\)$")


def test_corrupt_image_in_folder_is_named(data_root):
    folder = write_image_folder(data_root, "pics", ["a", "b"], 4)
    bad = os.path.join(folder, "b", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"<html>not an image</html>")
    cfg = make_dataset_cfg(data_root, "ImageFolder", shots=1, DATASET__IMAGE_FOLDER__DIR="pics")
    fails_without_writing(data_root, cfg, re.escape(bad), r"#image-folders")


def test_corrupt_image_in_fewshot_draw_is_named(general10_root):
    root, fakes = general10_root
    fake = fakes["DescribableTextures"]
    for rel, _, _ in fake.split["train"]:
        with open(os.path.join(fake.dataset_dir, "images", rel), "wb") as f:
            f.write(b"\x00" * 10)
    cfg = make_dataset_cfg(root, "DescribableTextures", shots=2)
    fails_without_writing(root, cfg, r"cannot read image .*images/\w+/\w+\.jpg", r"#describabletextures")


def test_task_with_no_images(data_root, tmp_path):
    os.makedirs(os.path.join(data_root, "empty", "cls_a"))
    write_image_folder(data_root, "full", ["x", "y"], 4)
    yaml = yaml_file(tmp_path, """
        DATASET:
          NAME: "MultiTask"
          MULTITASK:
            TASKS:
              - {KEY: "full", IMAGE_FOLDER: {DIR: "full"}}
              - {KEY: "empty", IMAGE_FOLDER: {DIR: "empty", DOCS: "plant-6"}}
        """)
    cfg = make_dataset_cfg(data_root, yaml=yaml, DATASET__SUBSAMPLE_TASKS="empty")
    fails_without_writing(data_root, cfg, r"TASKS\[1\] \(empty\)", r"no images found",
                          re.escape(os.path.join(data_root, "empty")), r"#plant-6")


class Collect(logging.Handler):
    """Records sent to one logger (caplog misses them once train.py has set up its own handlers)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_more_shots_than_images_warns_and_uses_all(data_root):
    write_image_folder(data_root, "few", ["a", "b"], 6)  # 3 train images per class
    cfg = make_dataset_cfg(data_root, "ImageFolder", shots=4, DATASET__IMAGE_FOLDER__DIR="few")
    collect, log = Collect(), logging.getLogger("datasets.fewshot")
    log.addHandler(collect)
    try:
        ds = DATASET_REGISTRY.get("ImageFolder")(cfg)
    finally:
        log.removeHandler(collect)
    assert len(ds.train_x) == 6
    warning = collect.messages[0]
    assert "few" in warning and "fewer than 4 train images" in warning and "DATASET.NUM_SHOTS" in warning
    assert "DATASETS.md#few-shot-sampling-and-cache" in warning


@pytest.mark.parametrize("entries, patterns", [
    ('[{MEMBER: "OxfordPets", NAME: "pets"}, {KEY: "p2", IMAGE_FOLDER: {DIR: "x"}, NAME: "pets"}]',
     [r"TASKS\[0\] and \[1\] have the same task NAME 'pets'"]),
    ('[{MEMBER: "OxfordPets"}, {MEMBER: "OxfordPets"}]', [r"same task KEY 'OxfordPets'"]),
    ('[{MEMBER: "OxfordPet"}]', [r"TASKS\[0\]\.MEMBER 'OxfordPet'", r"did you mean 'OxfordPets'",
                                 r"valid: \[.*'Caltech101'.*'ImageFolder'.*\]"]),
    ('[{MEMBER: "OxfordPets", TEMPLATES: "a {}."}]', [r"TASKS\[0\] has unknown keys \['TEMPLATES'\]"]),
    ('[{MEMBER: "OxfordPets", METRIC: "top1"}]', [r"TASKS\[0\]\.METRIC is 'top1'"]),
    ('[{MEMBER: "MultiTask"}]', [r"'MultiTask' is not a registered dataset"]),
    ('[]', [r"DATASET\.MULTITASK\.TASKS is empty"]),
])
def test_bad_benchmark_entries(general10_root, tmp_path, entries, patterns):
    root, _ = general10_root
    yaml = yaml_file(tmp_path, f'DATASET:\n  NAME: "MultiTask"\n  MULTITASK:\n    TASKS: {entries}\n')
    fails_without_writing(root, make_dataset_cfg(root, yaml=yaml, shots=1), *patterns,
                          r"DATASETS\.md#your-own-benchmark")


def test_duplicate_name_found_after_build_is_refused(data_root, tmp_path):
    """Names that come from the members themselves are checked too."""
    for rel in ("a/flowers", "b/flowers"):
        write_image_folder(data_root, rel, ["x", "y"], 4)
    yaml = yaml_file(tmp_path, """
        DATASET:
          NAME: "MultiTask"
          MULTITASK:
            TASKS: [{IMAGE_FOLDER: {DIR: "a/flowers"}}, {IMAGE_FOLDER: {DIR: "b/flowers"}}]
        """)
    with pytest.raises(DatasetError, match=r"same task NAME 'flowers'.*#your-own-benchmark"):
        DATASET_REGISTRY.get("MultiTask")(make_dataset_cfg(data_root, yaml=yaml))


@pytest.mark.parametrize("selector, pattern", [
    ("10", r"task index 10 is not in 0\.\.9"),
    ("Pets", r"'Pets' matches no task; .*6: OxfordPets / pet breed recognition"),
])
def test_bad_task_selection(general10_root, selector, pattern):
    root, _ = general10_root
    cfg = make_dataset_cfg(root, yaml=GENERAL10, shots=1, DATASET__SUBSAMPLE_TASKS=selector)
    fails_without_writing(root, cfg, r"DATASET\.SUBSAMPLE_TASKS", pattern, r"#selecting-tasks")


def test_bad_config_values(general10_root):
    root, _ = general10_root
    fails_without_writing(root, make_dataset_cfg(root, "EuroSAT", shots=1, DATASET__SUBSAMPLE_CLASSES="half"),
                          r"DATASET\.SUBSAMPLE_CLASSES is 'half'", r"#base-to-new")
    write_image_folder(root, "pics", ["a"], 4)
    cfg = make_dataset_cfg(root, "ImageFolder", DATASET__IMAGE_FOLDER__DIR="pics",
                           DATASET__IMAGE_FOLDER__SPLIT_RATIOS=(0.5, 0.5, 0.5))
    fails_without_writing(root, cfg, r"DATASET\.IMAGE_FOLDER\.SPLIT_RATIOS", r"#image-folders")
    fails_without_writing(root, make_dataset_cfg(root, "ImageFolder"), r"DATASET\.IMAGE_FOLDER\.DIR is empty")


def test_misspelt_key_is_rejected_by_yacs(tmp_path):
    yaml = yaml_file(tmp_path, 'DATASET:\n  SUBSAMPLE_CLASS: "base"\n')
    with pytest.raises(KeyError, match="DATASET.SUBSAMPLE_CLASS"):
        make_dataset_cfg("/x", yaml=yaml)


def test_every_section_named_in_messages_exists_in_datasets_md():
    text = (REPO / "DATASETS.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    sources = list((REPO / "datasets").glob("*.py")) + list((REPO / "configs" / "datasets").glob("*.yaml"))
    used = set()
    for path in sources:
        src = path.read_text()
        used |= set(re.findall(r'(?:section|SECTION|DOCS)\s*[=:]\s*"([a-z0-9-]+)"', src))
        used |= set(re.findall(r'see\("([a-z0-9-]+)"\)', src))
        used |= set(re.findall(r'DATASETS\.md#([a-z0-9-]+)', src))
        used |= set(re.findall(r'"([a-z0-9]+(?:-[a-z0-9]+)+)"\)', src))  # DatasetError(..., "a-section")
    assert used and not used - anchors, sorted(used - anchors)
