"""A stand-in accelerator for CPU machines: catches a CPU tensor meeting a model that lives "elsewhere".

    with FakeDevice() as dev:
        dev.move(pipe.system)        # parameters and buffers now report device "meta"
        pipe(request)                # any op mixing them with a plain CPU tensor raises DeviceMismatch

Tensors on the fake device are wrapper subclasses that hold real CPU data but report `device == meta`,
so code that does `torch.zeros(..., device=param.device)` or `x.to(param.device)` lands on the fake
device, exactly as it would land on "cuda", and every computation still gives real numbers. A dispatch
mode sees every aten op: it unwraps the arguments, raises if fake-device and plain CPU tensors meet
(PyTorch's own rule: only 0-dim CPU tensors may join a GPU op; copies may cross devices), runs the op
on the CPU data and wraps the results that belong on the fake device. Leaving the fake device
(`.cpu()`, `.to("cpu")`, `.numpy()` after `.cpu()`) gives plain tensors, as on a GPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("meta")
CROSS_DEVICE_OPS = {  # ops PyTorch allows across devices (copies)
    torch.ops.aten._to_copy.default,
    torch.ops.aten.copy_.default,
    torch.ops.aten.copy.default,
    torch.ops.aten._copy_from.default,
    torch.ops.aten._copy_from_and_resize.default,
    torch.ops.aten.lift_fresh.default,
}
INDEX_OPS = {  # a GPU tensor may be indexed with CPU indices
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}


class DeviceMismatch(RuntimeError):
    """A CPU tensor met a tensor on the (fake) accelerator in one op."""


class OnFake(torch.Tensor):
    """CPU data that reports the fake device."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> OnFake:
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=FAKE, requires_grad=inner.requires_grad,
        )  # fmt: skip
        out.inner = inner
        return out

    def __repr__(self) -> str:
        return f"OnFake({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} ran on a fake-device tensor outside FakeDevice()")


def _is_fake_device(d: object) -> bool:
    return d is not None and torch.device(d) == FAKE


class _Factories(TorchFunctionMode):
    """torch.tensor(data, device=meta) would make a real, empty meta tensor: build on the CPU, then move."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.tensor, torch.as_tensor) and _is_fake_device(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
            return func(*args, **kwargs).to(FAKE)
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], OnFake):
            args = (args[0], _index_lists_to_tensors(args[1]), *args[2:])  # else torch builds them on "meta"
        if func is torch.Tensor.tolist and isinstance(args[0], OnFake):
            return args[0].inner.tolist()  # as on a GPU: the values come back to Python
        if func is torch.Tensor.numpy and isinstance(args[0], OnFake):
            raise DeviceMismatch("numpy() of a tensor on the accelerator; call .cpu() first")
        return func(*args, **kwargs)


class FakeDevice(TorchDispatchMode):
    """The dispatch mode; `move(module)` puts a module's parameters and buffers on the fake device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0  # ops that ran with fake-device tensors (so a test can tell the mode saw work)
        self._factories = _Factories()

    def __enter__(self) -> FakeDevice:
        self._factories.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._factories.__exit__(*exc)

    def move(self, module: nn.Module) -> nn.Module:
        with torch.no_grad():
            for sub in module.modules():
                for name, p in list(sub._parameters.items()):
                    if p is not None and not isinstance(p, OnFake):
                        sub._parameters[name] = nn.Parameter(OnFake(p.data), requires_grad=p.requires_grad)
                for name, b in list(sub._buffers.items()):
                    if b is not None and not isinstance(b, OnFake):
                        sub._buffers[name] = OnFake(b)
        return module

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        flat, _ = tree_flatten((args, kwargs))
        fake = [t for t in flat if isinstance(t, OnFake)]
        if any(isinstance(t, torch.Tensor) and not isinstance(t, OnFake) and t.is_meta for t in flat):
            raise RuntimeError(f"{func}: a real meta tensor (no data) was built; FakeDevice must intercept its maker")
        plain = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, OnFake) and t.dim() > 0]
        if func in INDEX_OPS:
            plain = [t for t in plain if t.is_floating_point()]
        if fake and plain and func not in CROSS_DEVICE_OPS:
            shapes = [tuple(t.shape) for t in plain]
            raise DeviceMismatch(
                f"{func}: CPU tensors of shapes {shapes} meet tensors on the accelerator; move them first"
            )
        to_fake = bool(fake)
        if kwargs.get("device") is not None:  # factories and .to(): the device asked for decides
            to_fake = _is_fake_device(kwargs["device"])
            if to_fake:
                kwargs["device"] = torch.device("cpu")
        if fake:
            self.ops += 1
        unwrapped_args = tree_map(_unwrap, args)
        unwrapped_kwargs = tree_map(_unwrap, kwargs)
        out = func(*unwrapped_args, **unwrapped_kwargs)
        if not to_fake:
            return out
        # in-place ops and views returning an input: hand back that input's wrapper
        by_inner = {id(t.inner): t for t in fake}
        return tree_map(lambda t: by_inner[id(t)] if id(t) in by_inner else _wrap(t), out)


def _unwrap(t: object) -> object:
    return t.inner if isinstance(t, OnFake) else t


def _wrap(t: object) -> object:
    return OnFake(t) if isinstance(t, torch.Tensor) and not isinstance(t, OnFake) else t


def _index_lists_to_tensors(index: object) -> object:
    """Lists of ints/bools in an index -> CPU tensors (a GPU tensor accepts CPU index tensors)."""
    if isinstance(index, list) and all(isinstance(i, int | bool) for i in index):
        return torch.tensor(index, device="cpu")
    if isinstance(index, tuple):
        return tuple(_index_lists_to_tensors(i) for i in index)
    return index
