"""Optimizers over parameters stacked along a client dimension that step exactly as N separate torch optimizers
would: per-client step counts (Adam's bias correction, SGD's first momentum step), and only the clients that took
part in a step are touched.

The arithmetic is torch's own fused Adam and SGD kernels (those of `torch.optim.Adam(fused=True)` and
`SGD(fused=True)`), which equal the single-tensor optimizers the loop pool uses, applied once per group of clients
that share a step count: one pass over the stacked tensors in the usual case where every client has stepped
equally often (a hand-written per-row Adam made ~12 passes, 23 % of a 1,000 × 1 round on the CPU)."""

import torch

from locfedmix.config import OptimizerConfig, OptimizerName

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which the loop engine uses


class StackedOptimizer:
    def __init__(self, params: list[torch.Tensor], n_clients: int, cfg: OptimizerConfig):
        self.params, self.cfg = params, cfg
        self.adam = cfg.name is OptimizerName.ADAM
        self.steps = torch.zeros(n_clients, dtype=torch.float64, device=params[0].device)
        self.first = [torch.zeros_like(p) for p in params]  # Adam's exp_avg, or SGD's momentum buffer
        self.second = [torch.zeros_like(p) for p in params] if self.adam else []  # Adam's exp_avg_sq
        self.moments = [self.first, self.second] if self.adam else [self.first] if cfg.momentum else []

    @torch.no_grad()
    def step(self, clients: torch.Tensor) -> None:
        """Update the rows of `clients` (sorted client indices) from the gradients accumulated in `.grad`."""
        self.steps[clients] += 1
        live = [k for k, p in enumerate(self.params) if p.grad is not None]
        counts = self.steps[clients]
        for count in counts.unique().tolist() if live else []:
            rows = clients[counts == count]
            self._step_rows(live, rows, int(count), whole=len(rows) == len(self.steps))

    def _step_rows(self, live: list[int], rows: torch.Tensor, count: int, whole: bool) -> None:
        """One fused update of parameters `live` for the clients `rows`, all at step `count`: in place when they
        are every client, on gathered copies written back otherwise."""
        pick = (lambda t: t) if whole else (lambda t: t.index_select(0, rows))
        params = [pick(self.params[k]) for k in live]
        grads = [pick(self.params[k].grad) for k in live]
        state = [[pick(moment[k]) for k in live] for moment in self.moments]
        cfg = self.cfg
        if self.adam:
            steps = [torch.full((), float(count), device=p.device) for p in params]
            torch._fused_adam_(params, grads, *state, [], steps, lr=cfg.lr, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1],
                               weight_decay=cfg.weight_decay, eps=ADAM_EPS, amsgrad=False, maximize=False)
        else:
            torch._fused_sgd_(params, grads, *(state or [[]]), weight_decay=cfg.weight_decay,
                              momentum=cfg.momentum, lr=cfg.lr, dampening=0.0, nesterov=False, maximize=False,
                              is_first_step=count == 1)
        if not whole:
            for targets, picked in zip([self.params, *self.moments], [params, *state]):
                for k, row in zip(live, picked):
                    targets[k].index_copy_(0, rows, row)

    @torch.no_grad()
    def restart(self, clients: torch.Tensor) -> None:
        """The rows of `clients` as a new optimizer's: no steps taken (so SGD's next step is a first one), zero
        moments."""
        self.steps[clients] = 0
        for moment in self.first + self.second:
            moment.index_fill_(0, clients, 0)

    def state_dict(self) -> dict:
        return {"steps": self.steps.clone(), "first": [t.clone() for t in self.first],
                "second": [t.clone() for t in self.second]}

    def load_state_dict(self, state: dict) -> None:
        self.steps.copy_(state["steps"])
        for mine, saved in zip(self.first + self.second, state["first"] + state["second"]):
            mine.copy_(saved)
