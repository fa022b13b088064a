"""Optimizers over parameters stacked along a client dimension that step exactly as N separate torch optimizers
would: per-client step counts (Adam's bias correction, SGD's first momentum step), and only the clients that took
part in a step are touched. The arithmetic follows torch.optim.Adam and SGD (single-tensor path) line by line."""

import torch

from locfedmix.config import OptimizerConfig, OptimizerName

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which the loop engine uses


def _rows(like: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A per-client scalar [K] shaped to broadcast against stacked tensors [K, ...]."""
    return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


class StackedOptimizer:
    def __init__(self, params: list[torch.Tensor], n_clients: int, cfg: OptimizerConfig):
        self.params, self.cfg = params, cfg
        self.adam = cfg.name is OptimizerName.ADAM
        self.steps = torch.zeros(n_clients, dtype=torch.float64, device=params[0].device)
        self.first = [torch.zeros_like(p) for p in params]  # Adam's exp_avg, or SGD's momentum buffer
        self.second = [torch.zeros_like(p) for p in params] if self.adam else []  # Adam's exp_avg_sq

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, clients: torch.Tensor) -> None:
        """Update the rows of `clients` (client indices) from the gradients accumulated in `.grad`."""
        full = len(clients) == len(self.steps)
        self.steps[clients] += 1
        steps = self.steps if full else self.steps[clients]
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            state = [p, self.first[k]] + ([self.second[k]] if self.adam else [])
            rows = state if full else [t.index_select(0, clients) for t in state]
            grad = p.grad if full else p.grad.index_select(0, clients)
            if self.cfg.weight_decay:
                grad = grad.add(rows[0], alpha=self.cfg.weight_decay)
            (self._adam if self.adam else self._sgd)(steps, grad, *rows)
            if not full:
                for target, row in zip(state, rows):
                    target.index_copy_(0, clients, row)

    def _adam(self, steps: torch.Tensor, grad: torch.Tensor, param, exp_avg, exp_avg_sq) -> None:
        beta1, beta2 = ADAM_BETAS
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.cfg.lr / (1 - beta1 ** steps)
        bias_correction2_sqrt = (1 - beta2 ** steps).sqrt()
        denom = (exp_avg_sq.sqrt() / _rows(param, bias_correction2_sqrt)).add_(ADAM_EPS)
        param.sub_(_rows(param, step_size) * (exp_avg / denom))

    def _sgd(self, steps: torch.Tensor, grad: torch.Tensor, param, buf) -> None:
        if self.cfg.momentum:
            first_step = _rows(buf, steps == 1).bool()
            buf.copy_(torch.where(first_step, grad, buf * self.cfg.momentum + grad))
            grad = buf
        param.add_(grad, alpha=-self.cfg.lr)

    def state_dict(self) -> dict:
        return {"steps": self.steps.clone(), "first": [t.clone() for t in self.first],
                "second": [t.clone() for t in self.second]}

    def load_state_dict(self, state: dict) -> None:
        self.steps.copy_(state["steps"])
        for mine, saved in zip(self.first + self.second, state["first"] + state["second"]):
            mine.copy_(saved)
