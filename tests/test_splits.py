"""The one hold-out rule (vitkit.data.splits) and the named seed streams, against hand counts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vitkit.data import ImageDataset, ShardSet, SplitRule, Stream, derive_seed, hold_out, load_dataset, shard_tail
from vitkit.data.splits import share_counts, split
from vitkit.errors import ConfigError


def _dataset(counts: list[int]) -> ImageDataset:
    """Images whose one pixel is their row number (so a row can be followed through subsets)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = (torch.arange(len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1)
    return ImageDataset(images, labels, [f"c{c}" for c in range(len(counts))], "toy")


def test_a_share_is_the_floor_of_each_class_and_at_least_one():
    rest, held = hold_out(_dataset([500, 10, 3, 1]), 0.02, Stream.VALIDATION)
    # 2 % of 500; at least one of 10 and of 3; none of a class with one image (it must be trained on)
    assert torch.bincount(held.labels, minlength=4).tolist() == [10, 1, 1, 0]
    assert len(rest) + len(held) == 514
    assert not set(rest.row_ids().tolist()) & set(held.row_ids().tolist())
    again = hold_out(_dataset([500, 10, 3, 1]), 0.02, Stream.VALIDATION)[1]
    assert torch.equal(again.row_ids(), held.row_ids())  # the same images every time
    other = hold_out(_dataset([500, 10, 3, 1]), 0.02, Stream.TEST)[1]
    assert not torch.equal(other.row_ids(), held.row_ids())  # another stream, other images
    assert share_counts(torch.tensor([0, 0, 1]), 2, 0.0) == [0, 0]


def test_a_dataset_with_a_test_split_keeps_it_whole_and_holds_validation_out_of_train():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    parts = split(train, test, SplitRule(val_fraction=0.02), own_test=True)
    assert parts.test is test and parts.test_from == "the test split"
    per_class = torch.bincount(train.labels, minlength=10).tolist()
    assert len(parts.val) == sum(max(1, math.floor(0.02 * n)) for n in per_class)  # 2 or 3 of ~144 each: 20
    assert len(parts.train) + len(parts.val) == len(train) == 1438
    assert not set(parts.train.row_ids().tolist()) & set(parts.val.row_ids().tolist())
    none = split(train, test, SplitRule(val_fraction=0.0), own_test=True)
    assert none.val is None and len(none.train) == len(train)


def test_a_folder_without_a_test_split_gets_a_test_share_first_then_a_validation_share():
    images = _dataset([50, 50, 20])
    parts = split(images, None, SplitRule(val_fraction=0.1, test_fraction=0.2), own_test=False)
    assert torch.bincount(parts.test.labels).tolist() == [10, 10, 4]  # 20 % of each class
    assert torch.bincount(parts.val.labels).tolist() == [4, 4, 1]  # 10 % of what is left: 40, 40, 16
    assert parts.counts() == {"train": 120 - 24 - 9, "val": 9, "test": 24}
    rows = [set(p.row_ids().tolist()) for p in (parts.train, parts.val, parts.test)]
    assert not any(a & b for a, b in itertools.combinations(rows, 2)) and len(set().union(*rows)) == 120
    # another validation fraction draws the same test images: the test share never moves
    wider = split(images, None, SplitRule(val_fraction=0.3, test_fraction=0.2), own_test=False)
    assert torch.equal(wider.test.row_ids(), parts.test.row_ids())


def test_the_held_out_images_of_a_class_do_not_depend_on_which_classes_a_run_keeps():
    images = _dataset([30, 30, 30])
    every = split(images, None, SplitRule(0.1, 0.2), own_test=False)
    some = split(images, None, SplitRule(0.1, 0.2), own_test=False, classes=["c2", "c0"])
    assert some.test.class_names == ["c2", "c0"]
    for part_all, part_some in ((every.test, some.test), (every.val, some.val)):
        kept = part_all.labels != 1
        assert set(part_all.row_ids()[kept].tolist()) == set(part_some.row_ids().tolist())


def test_the_rule_refuses_fractions_out_of_range():
    for bad in (dict(val_fraction=1.0), dict(val_fraction=-0.1), dict(test_fraction=0.0)):
        with pytest.raises(ConfigError, match="fraction"):
            SplitRule(**bad)


def test_the_validation_share_of_shards_is_the_tail_in_writing_order():
    shards = ShardSet(["a.tar", "b.tar", "c.tar"], [100, 100, 30], ["x", "y"])
    train, val = shard_tail(shards, 0.2)  # 46 samples: the 30 of c and the last 16 of b
    assert val.urls == ["b.tar", "c.tar"] and val.counts == [16, 30] and val.firsts == [84, 0]
    assert train.urls == ["a.tar", "b.tar"] and train.counts == [100, 84]
    assert train.totals == [100, 100] and val.totals == [100, 30]  # each shard checked whole when read
    assert train.samples + val.samples == shards.samples
    assert shard_tail(shards, 0.0) == (shards, None)


def test_named_streams_never_hand_two_uses_the_same_seed():
    """The bug this replaced: augmentation at epoch 0, batches 6-10, drew the seeds of the split,
    the subsets and the initial weights (all were derive_seed(seed, 0, 7..11))."""
    for seed in range(4):
        once = {derive_seed(seed, s) for s in (Stream.WEIGHTS, Stream.LIMIT_TRAIN, Stream.PER_CLASS)}
        once |= {derive_seed(0, Stream.VALIDATION), derive_seed(0, Stream.TEST)}
        augment = {derive_seed(seed, Stream.AUGMENT, 0, b) for b in range(64)}
        order = {derive_seed(seed, Stream.EPOCH_ORDER, e) for e in range(64)}
        assert not once & augment and not once & order and not augment & order
    with pytest.raises(TypeError, match="Stream"):
        derive_seed(0, 7)
