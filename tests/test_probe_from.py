"""`ew.probe_from`: N batches taken once and copied; `probe=` refuses loaders, iterators and bare batches."""

from __future__ import annotations

import itertools
from collections import namedtuple

import cases
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import edgewatch as ew
from edgewatch.hooks.validation import check_callback_arguments

TAKE_A_FEW = "probe=ew.probe_from(loader, batches=4)"


class CountingDigits(Dataset):
    """4,096 digit-shaped examples that count how many were read."""

    def __init__(self, size: int = 4096) -> None:
        self.size, self.reads = size, 0
        generator = torch.Generator().manual_seed(0)
        self.x = torch.rand(size, 64, generator=generator)
        self.y = torch.randint(0, 10, (size,), generator=generator)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        self.reads += 1
        return self.x[index], self.y[index]


class Endless(IterableDataset):
    """An endless stream of batches without a length (fails past 1,000 instead of hanging)."""

    def __iter__(self):
        for _ in range(1000):
            yield torch.zeros(2, 64), torch.zeros(2, dtype=torch.long)
        raise AssertionError("the stream was read far past the probe")


def counting_generator(counter: list[int]):
    """Endless batches, counted; a test that reads far past what it asked for fails instead of hanging."""
    for index in itertools.count():
        counter[0] += 1
        assert counter[0] <= 1000, "the generator was read far past the probe"
        yield torch.full((8, 64), float(index)), torch.zeros(8, dtype=torch.long)


@pytest.fixture
def mlp_and_sgd():
    model = cases.mlp(hidden=8)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def monitor(mlp_and_sgd, probe) -> ew.Monitor:
    model, optimizer = mlp_and_sgd
    return ew.Monitor(model, optimizer, cases.cross_entropy, probe=probe, curvature=None, run_dir=False)


def test_takes_exactly_n_batches_of_a_large_loader():
    dataset = CountingDigits()
    loader = DataLoader(dataset, batch_size=64)
    assert len(loader) == 64
    probe = ew.probe_from(loader, batches=3)
    assert len(probe) == 3 and dataset.reads == 3 * 64  # not one example further
    assert all(x.shape == (64, 64) and y.shape == (64,) for x, y in probe)
    assert torch.equal(probe[1][0], dataset.x[64:128])
    assert len(ew.probe_from(loader)) == ew.probing.DEFAULT_BATCHES


def test_an_infinite_generator_stops_at_n():
    counter = [0]
    generator = counting_generator(counter)
    probe = ew.probe_from(generator, batches=5)
    assert len(probe) == 5 and counter[0] == 5
    assert next(generator)[0][0, 0] == 5.0  # the caller's generator goes on where the probe stopped
    assert len(ew.probe_from(DataLoader(Endless(), batch_size=None), batches=2)) == 2


def test_the_copies_are_private():
    buffer = torch.zeros(4, 64)
    big = torch.arange(1000 * 64, dtype=torch.float32).view(1000, 64)

    def reusing_loader():
        for step in range(3):
            buffer.fill_(step)  # a loader that refills one buffer in place
            yield buffer, big[step * 4 : step * 4 + 4]

    probe = ew.probe_from(reusing_loader(), batches=3)
    buffer.fill_(-1.0)
    big.zero_()
    assert [float(x[0, 0]) for x, _ in probe] == [0.0, 1.0, 2.0]
    assert probe[2][1][0, 0] == 8 * 64
    assert probe[2][1].untyped_storage().nbytes() == 4 * 64 * 4  # a slice does not keep `big` alive


def test_structure_device_and_autograd_are_handled():
    Pair = namedtuple("Pair", "x y")
    leaf = torch.ones(3, 2, requires_grad=True)
    batches = [{"inputs": Pair(leaf * 2, [torch.ones(3), "text"]), "n": 3}]
    (batch,) = ew.probe_from(batches, batches=1)
    assert isinstance(batch["inputs"], Pair) and batch["inputs"].y[1] == "text" and batch["n"] == 3
    assert not batch["inputs"].x.requires_grad and batch["inputs"].x.grad_fn is None
    (moved,) = ew.probe_from(batches, batches=1, device="meta")
    assert moved["inputs"].x.device.type == "meta" and moved["inputs"].y[0].device.type == "meta"
    with torch.inference_mode():
        made = [(torch.ones(2, 64), torch.zeros(2, dtype=torch.long))]
    assert not ew.probe_from(made, batches=1)[0][0].is_inference()


def test_a_short_loader_warns_and_bad_arguments_are_refused():
    with pytest.warns(UserWarning, match="ended after 2 of the 4 batches asked for; the probe has 2"):
        assert len(ew.probe_from([(torch.ones(1), torch.ones(1))] * 2, batches=4)) == 2
    with pytest.raises(ValueError, match="yielded no batch"):
        ew.probe_from([])
    with pytest.raises(ValueError, match="batches must be a positive integer"):
        ew.probe_from([torch.ones(1)], batches=0)
    with pytest.raises(TypeError, match=r"got a single Tensor batch; for one batch you hold, pass probe=\[batch\]"):
        ew.probe_from(torch.ones(4, 64))
    with pytest.raises(TypeError, match=r"got a single tuple batch; .*probe=\[batch\]"):
        ew.probe_from((torch.ones(4, 64), torch.zeros(4)))
    with pytest.raises(TypeError, match="batch it first"):
        ew.probe_from(CountingDigits(8))


def test_a_probe_from_a_loader_watches_a_run(mlp_and_sgd):
    watched = monitor(mlp_and_sgd, ew.probe_from(DataLoader(CountingDigits(), batch_size=64), batches=2))
    assert len(watched.curvature.hessian.probe) == 2


@pytest.mark.parametrize("make_probe, message", [
    (lambda: DataLoader(CountingDigits(), batch_size=64), r"got a DataLoader of 64 batches, which would be copied whole"),
    (lambda: counting_generator([0]), r"got a generator \(an iterable without a length"),
    (lambda: iter([(torch.ones(2, 64), torch.zeros(2, dtype=torch.long))]), r"got a list_iterator"),
    (lambda: Endless(), r"got a Endless \(an iterable without a length"),
])
def test_probe_refuses_loaders_and_iterables_without_a_length(mlp_and_sgd, make_probe, message):
    with pytest.raises(TypeError, match=message) as refused:
        monitor(mlp_and_sgd, make_probe())
    assert TAKE_A_FEW in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(TypeError, match=message):
        check_callback_arguments(cases.cross_entropy, make_probe(), {}, "EdgewatchCallback")


@pytest.mark.parametrize("batch, shown", [
    ((torch.rand(4, 64), torch.zeros(4, dtype=torch.long)), r"a single tuple batch of 2; wrap it: \[batch\], as in probe=\[\(x, y\)\]"),
    (torch.rand(4, 64), r"a single Tensor; wrap it: \[batch\], as in probe=\[x\]"),
    ({"x": torch.rand(4, 64)}, r"a single dict; wrap it: \[batch\], as in probe=\[batch\]"),
])
def test_probe_refuses_a_bare_batch(mlp_and_sgd, batch, shown):
    with pytest.raises(TypeError, match=shown):
        monitor(mlp_and_sgd, batch)


def test_lists_and_tuples_of_batches_are_taken_as_they_are(mlp_and_sgd):
    x, y = cases.digits(40)
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    assert len(monitor(mlp_and_sgd, batches).curvature.hessian.probe) == 2
    assert len(monitor(mlp_and_sgd, tuple(batches)).curvature.hessian.probe) == 2


def test_probe_refuses_a_dataset_of_examples(mlp_and_sgd):
    with pytest.raises(TypeError, match=r"got a CountingDigits of examples; batch it and take a few: probe=ew.probe_from\(DataLoader"):
        monitor(mlp_and_sgd, CountingDigits(8))
