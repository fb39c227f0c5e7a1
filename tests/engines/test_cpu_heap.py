"""``reuse_heap`` tunes glibc's allocator only on CPU, and puts the defaults back."""
import torch

from vitquant.engines import cpu_heap


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append(("mallopt", option, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_cpu_keeps_the_heap_then_restores_the_defaults(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(cpu_heap, "glibc", lambda: libc)
    with cpu_heap.reuse_heap(torch.device("cpu")):
        assert libc.calls == [("mallopt", k, v) for k, v in cpu_heap.KEEP.items()]
    assert libc.calls[len(cpu_heap.KEEP):] == [("mallopt", k, v) for k, v in cpu_heap.DEFAULTS.items()] \
        + [("malloc_trim", 0)]


def test_other_devices_are_left_alone(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(cpu_heap, "glibc", lambda: libc)
    with cpu_heap.reuse_heap(torch.device("meta")):
        pass
    assert libc.calls == []


def test_the_real_allocator_survives_a_training_step():
    layer = torch.nn.Linear(64, 64)
    with cpu_heap.reuse_heap(torch.device("cpu")):
        for _ in range(3):
            layer(torch.randn(512, 64)).pow(2).sum().backward()
    assert layer.weight.grad is not None
