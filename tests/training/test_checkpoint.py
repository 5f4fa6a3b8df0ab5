import json
import random

import numpy as np
import torch
from torch import nn

from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _setup(seed: int):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 1e-2}, {"params": net[2].parameters(), "lr": 1e-3}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return net, opt, sched


def _step(net, opt, sched):
    loss = net(torch.randn(3, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_roundtrip_restores_everything_and_continues_identically(tmp_path):
    net, opt, sched = _setup(0)
    for _ in range(3):
        _step(net, opt, sched)
    path = save_checkpoint(tmp_path, 3, net, opt, sched, {"stage": 0})
    assert latest_checkpoint(tmp_path) == path
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir() if p.is_dir())  # no temp folder left
    _step(net, opt, sched)  # the step after the checkpoint, from the saved RNG state
    want = [p.detach().clone() for p in net.parameters()]
    expect_rand = (torch.rand(2), np.random.rand(), random.random())

    net2, opt2, sched2 = _setup(1)  # different init: everything must come from the checkpoint
    meta = load_checkpoint(path, net2, opt2, sched2)
    assert meta["step"] == 3 and meta["stage"] == 0
    _step(net2, opt2, sched2)
    for a, b in zip(want, net2.parameters(), strict=True):
        assert torch.equal(a, b)
    got_rand = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(expect_rand[0], got_rand[0]) and expect_rand[1:] == got_rand[1:]
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert json.loads((path / "trainer.json").read_text())["optimizer"]["param_groups"][0]["lr"] > 0


def test_keeps_only_newest(tmp_path):
    net, opt, sched = _setup(0)
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, net, opt, sched, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
