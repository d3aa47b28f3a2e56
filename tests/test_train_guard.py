"""Training stops on a non-finite loss before the update, naming the stage, step and lr."""

from __future__ import annotations

import pytest
import torch

from compression.train import NonFiniteLoss, TrainConfig, train


class NanAt:
    """A toy objective: a finite quadratic loss, then NaN from step ``bad`` (1-based)."""

    def __init__(self, bad: int):
        self.bad, self.calls = bad, 0

    def __call__(self, model, batch):
        self.calls += 1
        loss = (model(torch.ones(1, 4)) ** 2).mean()
        return loss * float("nan") if self.calls >= self.bad else loss


def test_nan_loss_stops_training_before_the_update():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    cfg = TrainConfig(steps=10, batch_queries=1, lr=1e-2, warmup_steps=1, eval_every=1000)
    snapshot = {}

    class Watch(NanAt):
        def __call__(self, model, batch):
            if self.calls == self.bad - 1:  # the weights the NaN step starts from
                snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
            return super().__call__(model, batch)

    with pytest.raises(NonFiniteLoss, match=r"\[distilled\].*step 3 \(lr "):
        train(model, list(range(8)), cfg, Watch(bad=3), desc="distilled")
    for k, v in model.state_dict().items():
        assert torch.isfinite(v).all() and torch.equal(v, snapshot[k]), k
