"""Learning-rate schedule, parameter groups and EMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trek_tracker.modeling.registry import build_model
from trek_tracker.train.ema import EMA, default_decay
from trek_tracker.train.schedule import (
    OptimConfig,
    apply_lr,
    build_optimizer,
    encoder_learning_rate,
    learning_rate,
)

CFG = OptimConfig(lr=2e-4, min_lr=1e-5, warmup_ratio=0.05, power=0.9)


def test_optimiser_defaults_are_the_official_recipe():
    """A config that leaves ``[optim]`` out trains with these (docs/training.md#optimiser, #learning-rate-schedule):
    AdamW (0.9, 0.999), eps 1e-8, weight decay 0.07, lr 2e-4 -> 1e-5, 5 % warm-up, power 0.9, encoder at 0.1x,
    clipping at norm 5."""
    cfg = OptimConfig()
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.warmup_ratio, cfg.power) == (2e-4, 1e-5, 0.07, 0.05, 0.9)
    assert (cfg.encoder_lr_ratio, tuple(cfg.betas), cfg.eps, cfg.grad_clip) == (0.1, (0.9, 0.999), 1e-8, 5.0)


def test_warmup_then_poly_decay():
    total = 1000  # 50 warm-up steps
    assert learning_rate(0, total, CFG) == pytest.approx(1e-5)
    assert learning_rate(25, total, CFG) == pytest.approx(1e-5 + 1.9e-4 * 0.5)
    assert learning_rate(50, total, CFG) == pytest.approx(2e-4)
    mid = 50 + 475
    assert learning_rate(mid, total, CFG) == pytest.approx(1e-5 + 1.9e-4 * 0.5**0.9)
    assert learning_rate(total, total, CFG) == pytest.approx(1e-5)
    lrs = [learning_rate(s, total, CFG) for s in range(50, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert encoder_learning_rate(2e-4, CFG) == pytest.approx(1.9e-5 + 1e-5)


def test_a_warm_up_of_a_fractional_length_is_not_rounded():
    """The official warm-up length is the float ``ratio x steps``: 150 steps warm up over 7.5 of them."""
    assert learning_rate(7, 150, CFG) == pytest.approx(1e-5 + 1.9e-4 * 7 / 7.5)
    assert learning_rate(8, 150, CFG) == pytest.approx(1e-5 + 1.9e-4 * (1 - 0.5 / 142.5) ** 0.9)


def test_no_warm_up_starts_at_the_full_lr():
    """``warmup_ratio = 0`` (allowed): the poly decay from step 0, as the official ``cur_step < warm_up_steps``."""
    cfg = OptimConfig(lr=2e-4, min_lr=1e-5, warmup_ratio=0.0, power=0.9)
    assert learning_rate(0, 100, cfg) == pytest.approx(2e-4)
    assert learning_rate(50, 100, cfg) == pytest.approx(1e-5 + 1.9e-4 * 0.5**0.9)


def test_param_groups_exempt_1d_and_named_and_skip_frozen():
    model = build_model("test_deaot_tiny", freeze_at=2)
    opt = build_optimizer(model, CFG)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [(g, names[id(p)], p) for g in opt.param_groups for p in g["params"]]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for _, n, _ in grouped} == trainable
    assert len(trainable) < len(list(model.parameters()))  # frozen encoder stages left out
    for g, n, p in grouped:
        exempt = p.ndim <= 1 or "conv_out" in n
        assert (g["weight_decay"] == 0.0) == exempt, n
        assert g["role"] == ("encoder" if n.startswith("encoder.") else
                             "id_bank" if n.startswith("id_bank.") else "rest")


def test_the_optimiser_is_adamw_with_the_configured_betas_and_eps():
    cfg = OptimConfig(betas=(0.8, 0.95), eps=1e-6)
    opt = build_optimizer(nn.Sequential(nn.Linear(2, 2)), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in opt.param_groups)


def test_apply_lr_prices_roles_and_freezes_the_id_bank():
    model = build_model("test_deaot_tiny")
    opt = build_optimizer(model, CFG)
    lr = apply_lr(opt, 100, 1000, CFG)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(encoder_learning_rate(lr, CFG) if g["role"] == "encoder" else lr)
    apply_lr(opt, 600, 1000, CFG, freeze_id_bank=True)
    bank = [g for g in opt.param_groups if g["role"] == "id_bank"]
    assert bank and all(g["lr"] == 0 and g["weight_decay"] == 0 for g in bank)
    apply_lr(opt, 600, 1000, CFG, freeze_id_bank=False)
    assert any(g["weight_decay"] > 0 for g in bank)


def test_ema_warmup_by_hand():
    assert default_decay(100_000) == pytest.approx(0.9999)
    assert default_decay(15) == pytest.approx(1 - 1 / 1.5)  # official 1 - 1 / (0.1 x steps)
    assert default_decay(10) == 0.0 and default_decay(5) == 0.0  # never negative for runs under 10 steps
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, decay=0.9999)
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)  # d = 2/11
    assert float(ema.module.weight) == pytest.approx(2 / 11 * 1 + 9 / 11 * 3)
    first = float(ema.module.weight)
    ema.update(net)  # d = 3/12
    assert float(ema.module.weight) == pytest.approx(0.25 * first + 0.75 * 3)
    state = ema.state_dict()
    other = EMA(net, decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 2 and other.decay == 0.9999
    assert torch.equal(other.module.weight, ema.module.weight)


def test_ema_copy_is_a_frozen_eval_mode_clone():
    """The averaged copy is evaluated, never trained: eval mode, no gradients, its own tensors."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    ema = EMA(net.train(), decay=0.9)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert not torch.equal(ema.module[0].weight, net[0].weight)


def test_ema_copies_what_training_does_not_change():
    """Frozen parameters and buffers stay bit-exact in the EMA copy (the official EMA averages only the
    trainable parameters and tracked BN statistics); averaging a constant would drift in float32."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.BatchNorm1d(64))
    net[0].requires_grad_(False)
    net.register_buffer("frozen_stat", torch.randn(64) * 3)
    ema = EMA(net, decay=0.9999)
    ema.updates = 10**6  # past the warm-up: d = 0.9999 throughout
    bn_mean = net[2].running_mean.clone()
    with torch.no_grad():
        net[1].weight.add_(1.0)
        net[2].running_mean.add_(1.0)
    for _ in range(3000):
        ema.update(net)
    assert torch.equal(ema.module[0].weight, net[0].weight) and torch.equal(ema.module[0].bias, net[0].bias)
    # what is not averaged follows the model exactly, even when it changes (a frozen-BN calibration)
    net.frozen_stat.mul_(2.0)
    ema.update(net)
    assert torch.equal(ema.module.frozen_stat, net.frozen_stat)
    # trainable weights and tracked BN statistics are averaged: 1 - 0.9999^3000 = 0.26 of the way
    moved = ema.module[1].weight - (net[1].weight - 1.0)
    assert float(moved.mean()) == pytest.approx(1 - 0.9999**3000, abs=1e-3)
    assert float((ema.module[2].running_mean - bn_mean).mean()) == pytest.approx(1 - 0.9999**3000, abs=1e-3)
