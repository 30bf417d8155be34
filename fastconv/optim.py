"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules with PyTorch's
exact update rules, on ``fastconv.nn.Parameter`` objects.

An optimizer takes an iterable of Parameters (or of dicts ``{"params": [...],
"lr": ...}``, PyTorch's parameter groups); ``step()`` updates every parameter
whose ``grad`` is not None, in place and in the parameter's dtype;
``zero_grad()`` sets the gradients to None. Schedules change
``param_groups[i]["lr"]`` on each ``step()``.
"""

from __future__ import annotations

import math

import numpy as np

from fastconv.nn.module import Parameter

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "CosineAnnealingLR",
    "StepLR", "ConstantLR", "make_scheduler",
]


def _check_nonnegative(value, name):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or \
            not value >= 0.0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class Optimizer:
    """Parameter groups, per-parameter state and ``zero_grad``."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [
            {"params": params}]
        self.param_groups = []
        for group in groups:
            self.add_param_group(group)
        # id(parameter) -> dict of arrays and counters
        self.state: dict[int, dict] = {}

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        parameters = group["params"]
        group["params"] = [parameters] if isinstance(
            parameters, Parameter) else list(parameters)
        for parameter in group["params"]:
            if not isinstance(parameter, Parameter):
                raise TypeError(
                    f"optimizers take fastconv.nn.Parameter objects, got "
                    f"{type(parameter).__name__}")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group.setdefault("initial_lr", group["lr"])
        self.param_groups.append(group)

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for parameter in group["params"]:
                parameter.grad = None

    def _parameters_with_grad(self, group):
        for parameter in group["params"]:
            if parameter.grad is not None:
                yield parameter, self.state.setdefault(id(parameter), {})

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    g = grad + weight_decay * p; with momentum: buf = momentum * buf +
    (1 - dampening) * g (buf = g on the first step), then g = buf, or g +
    momentum * buf with Nesterov; p -= lr * g.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov=False):
        _check_nonnegative(lr, "lr")
        _check_nonnegative(momentum, "momentum")
        _check_nonnegative(weight_decay, "weight_decay")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and "
                             "dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum,
                                      dampening=dampening,
                                      weight_decay=weight_decay,
                                      nesterov=nesterov))

    def step(self) -> None:
        for group in self.param_groups:
            momentum = group["momentum"]
            for parameter, state in self._parameters_with_grad(group):
                grad = parameter.grad
                if group["weight_decay"]:
                    grad = grad + group["weight_decay"] * parameter.data
                if momentum:
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        buffer = state["momentum_buffer"] = np.array(grad)
                    else:
                        buffer *= momentum
                        buffer += (1.0 - group["dampening"]) * grad
                    grad = grad + momentum * buffer if group["nesterov"] \
                        else buffer
                parameter.data -= group["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma and Ba), as ``torch.optim.Adam``: L2 ``weight_decay``
    added to the gradient; ``amsgrad`` keeps the running maximum of v.
    """

    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False):
        _check_nonnegative(lr, "lr")
        _check_nonnegative(eps, "eps")
        _check_nonnegative(weight_decay, "weight_decay")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got "
                             f"{betas!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def step(self) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, weight_decay = group["lr"], group["weight_decay"]
            for parameter, state in self._parameters_with_grad(group):
                grad = parameter.grad
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(parameter.data)
                    state["exp_avg_sq"] = np.zeros_like(parameter.data)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = np.zeros_like(
                            parameter.data)
                state["step"] += 1
                step = state["step"]
                if weight_decay:
                    if self.decoupled_weight_decay:
                        parameter.data *= 1.0 - lr * weight_decay
                    else:
                        grad = grad + weight_decay * parameter.data
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                # PyTorch's lerp form: m + (1 - beta1) * (g - m).
                exp_avg += (1.0 - beta1) * (grad - exp_avg)
                exp_avg_sq *= beta2
                exp_avg_sq += (1.0 - beta2) * grad * grad
                bias_correction1 = 1.0 - beta1 ** step
                bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
                if group["amsgrad"]:
                    np.maximum(state["max_exp_avg_sq"], exp_avg_sq,
                               out=state["max_exp_avg_sq"])
                    second_moment = state["max_exp_avg_sq"]
                else:
                    second_moment = exp_avg_sq
                denominator = np.sqrt(second_moment) / bias_correction2_sqrt
                denominator += group["eps"]
                parameter.data -= (lr / bias_correction1) * (
                    exp_avg / denominator)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as
    ``torch.optim.AdamW``: p *= 1 - lr * weight_decay before the Adam step.
    """

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# ------------------------------------------------------------------ schedules

class LRScheduler:
    """Sets each group's lr from its ``initial_lr`` and a step counter.

    ``step()`` advances the counter (call it once per epoch or once per
    batch, consistently with how ``T_max``/``step_size`` were counted).
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lrs = [group["initial_lr"] for group in
                         optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def lr_at(self, base_lr: float, step: int) -> float:
        raise NotImplementedError

    def _apply(self):
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base_lr, self.last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list:
        return [group["lr"] for group in self.optimizer.param_groups]


class ConstantLR(LRScheduler):
    """The learning rate never changes (the schedule ``none``)."""

    def lr_at(self, base_lr, step):
        return base_lr


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2``:
    ``torch.optim.lr_scheduler.CosineAnnealingLR``'s closed form.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        if T_max < 1:
            raise ValueError(f"T_max must be >= 1, got {T_max}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer)

    def lr_at(self, base_lr, step):
        return self.eta_min + (base_lr - self.eta_min) * (
            1.0 + math.cos(math.pi * step / self.T_max)) / 2.0


class StepLR(LRScheduler):
    """``base * gamma ** (t // step_size)``, as ``StepLR``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer)

    def lr_at(self, base_lr, step):
        return base_lr * self.gamma ** (step // self.step_size)


SCHEDULES = ("cosine", "step", "none")


def make_scheduler(name: str, optimizer: Optimizer, total_steps: int
                   ) -> LRScheduler:
    """The CLI's schedules, stepped once per batch over ``total_steps``:
    ``cosine`` (annealed to zero), ``step`` (x0.1 after each third of the
    run), ``none`` (constant).
    """
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if name == "step":
        return StepLR(optimizer, step_size=max(1, total_steps // 3),
                      gamma=0.1)
    if name == "none":
        return ConstantLR(optimizer)
    raise ValueError(f"unknown schedule {name!r}; choose from {SCHEDULES}")
