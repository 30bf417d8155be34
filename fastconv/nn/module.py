"""``Parameter``, ``Module`` and ``Sequential``: a PyTorch-shaped module system
with explicit backward passes.

A module's ``forward(x)`` saves whatever its ``backward`` will need (the
input, a mask, pooling indices) with ``save_for_backward``;
``backward(grad_output)`` takes it back with ``pop_saved``, returns the
gradient with respect to that forward's input and adds the gradients of the
module's parameters into ``Parameter.grad``. A module may be called several
times before its backward passes (a layer shared or used twice): in training
mode every forward pushes its values on a stack and the backward calls
consume them last-in first-out, the order in which a network's backward
meets them. In eval mode a forward keeps only its own values (an inference
loop's memory stays flat; a backward right after it still works, except
through a layer that the forward used twice, which kept its second call
only: backpropagate through shared layers in training mode).

Names, registration order and ``state_dict`` keys follow PyTorch, so that a
``state_dict`` moves between the two as a dict of arrays.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Parameter:
    """A trainable array and the gradient accumulated for it.

    ``data`` is a float32 or float64 ndarray; ``grad`` is None (no gradient
    since the last ``zero_grad``) or an ndarray of ``data``'s shape and dtype.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        data = np.array(data, copy=True)
        if data.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"a Parameter must be float32 or float64, got {data.dtype}")
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def accumulate_grad(self, grad: np.ndarray) -> None:
        """Add ``grad`` (``data``'s shape) into ``self.grad``."""
        if grad.shape != self.data.shape:
            raise ValueError(
                f"gradient of shape {grad.shape} for a parameter of shape "
                f"{self.data.shape}")
        if self.grad is None:
            self.grad = np.array(grad, dtype=self.data.dtype, copy=True)
        else:
            self.grad += grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` skipped, as in PyTorch."""

    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class: parameters, buffers and submodules registered by assignment.

    Subclasses implement ``forward(x)`` and ``backward(grad_output)``.
    Assigning a ``Parameter`` or a ``Module`` to an attribute registers it
    (in assignment order, which fixes the ``state_dict`` order); arrays that
    are state but not trained (running statistics) go through
    ``register_buffer``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_saved_for_backward", [])

    # ------------------------------------------------------------ registration

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}.__init__ must call super().__init__() "
                "before assigning attributes")
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry and not (
                    registry is self._buffers and isinstance(value, np.ndarray)):
                del registry[name]
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: look in the registries.
        for registry in ("_parameters", "_buffers", "_modules"):
            found = self.__dict__.get(registry)
            if found is not None and name in found:
                return found[name]
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array: np.ndarray | None) -> None:
        """Register non-trained state (saved in ``state_dict``)."""
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"attribute {name!r} already exists")
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    def register_module(self, name: str, module: Module | None) -> None:
        self._modules[name] = module

    # ------------------------------------------------------- forward / backward

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def save_for_backward(self, *values) -> None:
        """Keep ``values`` for the backward of the forward now running.

        Training mode: pushed on this module's stack, one entry per forward
        not yet consumed by a backward (each holds its arrays until then).
        Eval mode: they replace whatever was saved, so at most the latest
        forward's values are kept.
        """
        saved = self.__dict__["_saved_for_backward"]
        if not self.training:
            saved.clear()
        saved.append(values)

    def pop_saved(self) -> tuple:
        """Remove and return the values of the latest forward whose backward
        has not run (a tuple, as given to ``save_for_backward``)."""
        saved = self.__dict__["_saved_for_backward"]
        if not saved:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward, or "
                f"more often: nothing saved (each backward consumes what one "
                f"forward saved)")
        return saved.pop()

    # ------------------------------------------------------------- traversal

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every submodule, depth first, each once."""
        seen = set()

        def walk(module, module_prefix):
            if id(module) in seen:
                return
            seen.add(id(module))
            yield module_prefix, module
            for name, child in module.named_children():
                yield from walk(child, f"{module_prefix}.{name}"
                                if module_prefix else name)

        yield from walk(self, prefix)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "") -> Iterator[
            tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` pairs, PyTorch's order, each once."""
        seen = set()
        for module_prefix, module in self.named_modules(prefix):
            for name, parameter in module._parameters.items():
                if parameter is None or id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                yield (f"{module_prefix}.{name}" if module_prefix
                       else name), parameter

    def parameters(self) -> Iterator[Parameter]:
        for _, parameter in self.named_parameters():
            yield parameter

    def named_buffers(self, prefix: str = "") -> Iterator[
            tuple[str, np.ndarray]]:
        for module_prefix, module in self.named_modules(prefix):
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    yield (f"{module_prefix}.{name}" if module_prefix
                           else name), buffer

    # ---------------------------------------------------------------- modes

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget accumulated gradients (``grad = None``, as PyTorch does)."""
        for parameter in self.parameters():
            parameter.grad = None

    @property
    def dtype(self) -> np.dtype | None:
        """The dtype computation runs in: that of the parameters."""
        for parameter in self.parameters():
            return parameter.dtype
        return None

    def _cast(self, dtype) -> Module:
        dtype = np.dtype(dtype)
        for module in self.modules():
            for parameter in module._parameters.values():
                if parameter is not None:
                    parameter.data = parameter.data.astype(dtype)
                    if parameter.grad is not None:
                        parameter.grad = parameter.grad.astype(dtype)
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.dtype in FLOAT_DTYPES:
                    module._buffers[name] = buffer.astype(dtype)
        return self

    def float(self) -> Module:
        """Compute in float32 (parameters and float buffers cast in place)."""
        return self._cast(np.float32)

    def double(self) -> Module:
        """Compute in float64 (for gradient checks)."""
        return self._cast(np.float64)

    # ----------------------------------------------------------- state dicts

    def _state_entries(self):
        """(key, module, local name, is_parameter) for every saved array."""
        for module_prefix, module in self.named_modules():
            for name, parameter in module._parameters.items():
                if parameter is not None:
                    key = f"{module_prefix}.{name}" if module_prefix else name
                    yield key, module, name, True
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    key = f"{module_prefix}.{name}" if module_prefix else name
                    yield key, module, name, False

    def state_dict(self) -> OrderedDict:
        """Copies of every parameter and buffer, keyed as PyTorch keys them."""
        state = OrderedDict()
        for key, module, name, is_parameter in self._state_entries():
            value = (module._parameters[name].data if is_parameter
                     else module._buffers[name])
            state[key] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict, strict: bool = True
                        ) -> IncompatibleKeys:
        """Copy arrays into the parameters and buffers, cast to their dtype.

        Keys and shapes must match ``state_dict()``'s; with ``strict=False``
        missing and unexpected keys are skipped and returned. A shape
        mismatch is always a ValueError.
        """
        entries = list(self._state_entries())
        expected = {key for key, *_ in entries}
        given = set(state_dict.keys())
        missing = sorted(expected - given)
        unexpected = sorted(given - expected)
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(
                f"state_dict does not match {type(self).__name__}: "
                + "; ".join(parts))
        converted = {}
        for key, module, name, is_parameter in entries:
            if key not in given:
                continue
            current = (module._parameters[name].data if is_parameter
                       else module._buffers[name])
            value = np.asarray(state_dict[key])
            if value.shape != current.shape:
                raise ValueError(
                    f"state_dict[{key!r}] has shape {value.shape}, expected "
                    f"{current.shape}")
            converted[key] = np.array(value, dtype=current.dtype, copy=True)
        # Assign only once everything checked out, so a failure changes nothing.
        for key, module, name, is_parameter in entries:
            if key in converted:
                if is_parameter:
                    module._parameters[name].data = converted[key]
                else:
                    module._buffers[name] = converted[key]
        return IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- repr

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, module in self.named_children():
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; ``state_dict`` keys ``"0.weight"``, ...

    ``Sequential(a, b, c)`` or ``Sequential(OrderedDict(name=module, ...))``.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                self.register_module(name, _check_module(module))
        else:
            for index, module in enumerate(modules):
                self.register_module(str(index), _check_module(module))

    def append(self, module: Module) -> Sequential:
        self.register_module(str(len(self._modules)), _check_module(module))
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index):
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(OrderedDict(
                list(self._modules.items())[index]))
        return modules[index]

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def backward(self, grad_output):
        for module in reversed(self._modules.values()):
            grad_output = module.backward(grad_output)
        return grad_output


def _check_module(module):
    if not isinstance(module, Module):
        raise TypeError(
            f"Sequential takes Modules, got {type(module).__name__}")
    return module
