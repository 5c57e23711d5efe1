import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from slimkit.data import fashion_mnist_available, load_data
from slimkit.data.idx import read_idx
from slimkit.errors import DataNotFoundError
from slimkit.recipe import DataConfig


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(50) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(20) % 10, gz=False)
    return tmp_path


def test_idx_reader_plain_and_gzipped(idx_folder):
    images = read_idx(idx_folder / "train-images-idx3-ubyte.gz")
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert read_idx(idx_folder / "t10k-labels-idx1-ubyte").tolist() == [i % 10 for i in range(20)]


def test_mnist_loader_reads_user_folder_with_deterministic_split(idx_folder):
    config = DataConfig(name="mnist", path=idx_folder, val_fraction=0.2)
    a, b = load_data(config), load_data(config)
    assert (len(a.train), len(a.val), len(a.test)) == (40, 10, 20)
    assert torch.equal(a.val.images, b.val.images)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    other = load_data(config.model_copy(update={"split_seed": 1}))
    assert not torch.equal(a.val.labels, other.val.labels) or not torch.equal(a.val.images, other.val.images)


def test_truncated_idx_file_is_reported(tmp_path, idx_folder):
    path = idx_folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DataNotFoundError, match="truncated"):
        load_data(DataConfig(name="mnist", path=idx_folder))


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_data(DataConfig(name="fashion_mnist", path=tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(DataNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        load_data(DataConfig(name="cifar10", path=tmp_path))
    with pytest.raises(DataNotFoundError, match="one sub-folder per class"):
        load_data(DataConfig(name="image_folder", path=tmp_path / "nope"))


def test_digits_split_and_normalisation():
    data = load_data(DataConfig(name="digits", val_fraction=0.1))
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.input_shape == (1, 8, 8)
    x, _ = data.train.__getitems__(list(range(len(data.train))))
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2
    assert data.train.augment == "none"  # auto: no crop/flip below 32x32


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
    path.write_bytes(pickle.dumps(batch))


def test_cifar10_batches(tmp_path):
    for i in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{i}", 10, i)
    _cifar_batch(tmp_path / "test_batch", 10, 9)
    data = load_data(DataConfig(name="cifar10", path=tmp_path, val_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 10)
    assert data.input_shape == (3, 32, 32) and data.train.augment == "crop_flip"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_pickled_code(tmp_path):
    for i in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{i}", 4, i)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(DataNotFoundError, match="refusing to load"):
        load_data(DataConfig(name="cifar10", path=tmp_path))


def test_image_folder_with_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    data = load_data(DataConfig(name="image_folder", path=tmp_path, image_size=16, val_fraction=0.25))
    assert data.classes == ["cat", "dog"]
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 4)
    assert data.input_shape == (3, 16, 16)


def test_augmentation_is_seeded_per_epoch():
    data = load_data(DataConfig(name="digits", augment="crop_flip"))
    ds = data.train
    ds.set_epoch(3)
    first = ds.__getitems__(list(range(32)))[0]
    ds.set_epoch(3)
    assert torch.equal(ds.__getitems__(list(range(32)))[0], first)
    ds.set_epoch(4)
    assert not torch.equal(ds.__getitems__(list(range(32)))[0], first)
    assert first.shape == (32, 1, 8, 8)


def test_crop_is_a_shifted_window_of_the_padded_image():
    data = load_data(DataConfig(name="digits", augment="crop"))
    ds = data.train
    ds.set_epoch(0)
    x = ds.images[:1].float().div(ds.scale)
    out = ds._augment(x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    windows = [padded[..., dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
    assert any(torch.equal(out, w) for w in windows)


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_full_split():
    data = load_data(DataConfig(name="fashion_mnist", val_fraction=0.1))
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.classes[0] == "T-shirt/top" and data.input_shape == (1, 28, 28)


def test_classes_keep_only_those_relabelled_in_the_given_order(idx_folder):
    # the fixture's labels are i % 10: 5 training and 2 test images per class
    data = load_data(DataConfig(name="mnist", path=idx_folder, val_fraction=0.0, classes=[7, 2, 5]))
    assert data.classes == ["7", "2", "5"] and data.num_classes == 3
    for split, per_class in (("train", 5), ("test", 2)):
        labels = getattr(data, split).labels
        assert torch.bincount(labels, minlength=3).tolist() == [per_class] * 3
    # each kept image is the one of its old class: image i has label i % 10
    raw = read_idx(idx_folder / "train-images-idx3-ubyte.gz")
    old = {7: 0, 2: 1, 5: 2}
    expected = sorted((raw[i].tobytes(), old[i % 10]) for i in range(50) if i % 10 in old)
    got = sorted((x.numpy().tobytes(), int(y)) for x, y in zip(data.train.images[:, 0], data.train.labels,
                                                               strict=True))
    assert got == expected
    by_name = load_data(DataConfig(name="mnist", path=idx_folder, val_fraction=0.0, classes=["7", "2", "5"]))
    assert torch.equal(by_name.train.labels, data.train.labels)


def test_classes_errors_name_the_key_and_the_value(idx_folder):
    from slimkit.errors import RecipeError, SlimkitError
    from slimkit.recipe import Recipe

    with pytest.raises(SlimkitError, match=r"data\.classes: mnist has no class 12; its classes are 0 '0'"):
        load_data(DataConfig(name="mnist", path=idx_folder, classes=[0, 12]))
    with pytest.raises(SlimkitError, match=r"data\.classes: mnist has no class 'Shirt'"):
        load_data(DataConfig(name="mnist", path=idx_folder, classes=[0, "Shirt"]))
    with pytest.raises(SlimkitError, match=r"names one class of mnist twice \(3\)"):
        load_data(DataConfig(name="mnist", path=idx_folder, classes=[3, "3"]))
    base = {"name": "x", "model": {"name": "lenet"}, "train": {"epochs": 1}}
    for classes, message in (([4], "at least two classes"), ([1, 1], "1 appears more than once"),
                             ([-1, 2], "class ids count from 0; got -1")):
        with pytest.raises(RecipeError) as info:
            Recipe.from_dict({**base, "data": {"name": "fashion_mnist", "classes": classes}})
        assert "'data.classes'" in str(info.value) and message in str(info.value)
    with pytest.raises(RecipeError, match="select the classes there"):
        Recipe.from_dict({**base, "data": {"factory": "user_code:regression_data", "classes": [0, 1]}},
                         trust_code=True)


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_confusable_classes():
    data = load_data(DataConfig(name="fashion_mnist", val_fraction=0.1, classes=[0, 2, 4, 6]))
    assert data.classes == ["T-shirt/top", "Pullover", "Coat", "Shirt"] and data.num_classes == 4
    assert (len(data.train), len(data.val), len(data.test)) == (21600, 2400, 4000)
    assert torch.bincount(data.test.labels).tolist() == [1000] * 4
    labels = torch.cat([data.train.labels, data.val.labels])
    assert torch.bincount(labels).tolist() == [6000] * 4 and labels.max() == 3
    assert "relabelled 0..3" in data.note


def test_a_zoo_model_takes_its_class_count_from_the_selected_classes(tmp_path):
    import slimkit
    from slimkit.recipe import Recipe

    recipe = Recipe.from_dict({"name": "three", "model": {"name": "lenet", "width": 0.5},
                               "data": {"name": "digits", "classes": [1, 7, 3]}, "train": {"epochs": 1},
                               "measure": {"batch_sizes": [1], "repeats": 1, "warmup": 1}})
    run = slimkit.run_recipe(recipe, tmp_path / "run", progress=False)
    logits = run.model(torch.zeros(2, 1, 8, 8))
    assert logits.shape == (2, 3) and run.metrics["data"]["note"].endswith("relabelled 0..2")
    assert slimkit.load(tmp_path / "run" / "model.pt")(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
