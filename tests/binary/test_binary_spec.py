"""Every numeric property of ../shared/specs/binarization.md (tolerance 1e-3 where the spec gives 4 decimals)."""

import math

import pytest
import torch

from slimkit.binary.binarizers import (
    ActivationBinarizer,
    IrNetWeight,
    RbnnWeight,
    RecuWeight,
    SimanWeight,
    XnorWeight,
    get_ab,
    standardize_rows,
)
from slimkit.binary.functions import ApproxSign, ClippedSTE, Ede, RbnnSign, log_schedule, surrogate_sign
from slimkit.binary.layers import BinaryConv2d
from slimkit.binary.modifiers import recu_tau

W8 = [0.5, -2.0, 0.1, 1.5, -0.3, 0.05, -1.0, 0.8]  # the spec's one-channel example


def grad_of(fn, x):
    x = torch.tensor(x, requires_grad=True)
    fn(x).sum().backward()
    return x.grad


# --- RBNN ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "ab"), [(144, (12, 12)), (288, (16, 18)), (576, (24, 24)), (1152, (32, 36)),
                                       (2304, (48, 48)), (4608, (64, 72)), (64, (8, 8)), (128, (8, 16))])
def test_rbnn_get_ab_table(n, ab):
    assert get_ab(n) == ab


@pytest.mark.parametrize(("epoch", "t", "k"), [(0, 0.01, 100), (500, 0.31623, 3.1623), (667, 1.00231, 1),
                                               (999, 9.93116, 1)])
def test_rbnn_t_k_schedule(epoch, t, k):
    got_t, got_k = log_schedule(epoch, 1000, 1e-2, 1e1)
    assert got_t == pytest.approx(t, abs=1e-4) and got_k == pytest.approx(k, abs=1e-4)


X5 = [0.0, 0.1, 0.5, 1.0, 2.0]


@pytest.mark.parametrize(("epoch", "expected"), [(0, [1.4142, 1.4132, 1.4092, 1.4042, 1.3942]),
                                                 (500, [1.4142, 1.3826, 1.2561, 1.0980, 0.7818]),
                                                 (999, [14.0448, 4.1820, 0, 0, 0])])
def test_rbnn_weight_gradient_factors(epoch, expected):
    t, k = log_schedule(epoch, 1000, 1e-2, 1e1)
    assert grad_of(lambda x: surrogate_sign(x, RbnnSign(t, k)), X5).tolist() == pytest.approx(expected, abs=1e-3)


def test_rbnn_activation_gradient_factors():
    for epoch in (0, 300, 666):
        t, _ = log_schedule(epoch, 1000, 1e-2, 1e1)
        g = grad_of(lambda x, t=t: surrogate_sign(x, RbnnSign(max(t, 1.0), 1.0)), X5)
        assert g.tolist() == pytest.approx([1.4142, 1.3142, 0.9142, 0.4142, 0], abs=1e-3)
    t, _ = log_schedule(999, 1000, 1e-2, 1e1)
    assert grad_of(lambda x: surrogate_sign(x, RbnnSign(t, 1.0)), [0.0]).item() == pytest.approx(math.sqrt(2) * t)


def _cos_to_sign(v):
    return (v.abs().sum(1) / (v.norm(dim=1) * v.shape[1] ** 0.5)).mean().item()


def test_rbnn_rotation_raises_the_objective_and_stays_orthogonal():
    cosines, flips = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        w = torch.randn(16, 16, 3, 3)
        binarizer = RbnnWeight(w, RbnnSign())
        x = standardize_rows(w).reshape(16, binarizer.a, binarizer.b)
        steps = [_cos_to_sign(x.reshape(16, -1))]
        objective = []
        for _ in range(3):
            before, after = binarizer.rotate(x, steps=1)
            objective += [before, after]
            rotated = binarizer.R1.T @ x @ binarizer.R2
            steps.append(_cos_to_sign(rotated.reshape(16, -1)))
        assert objective == sorted(objective)  # sum ||R1^T X_i R2||_1 never decreases
        eye_a, eye_b = torch.eye(binarizer.a), torch.eye(binarizer.b)
        assert torch.allclose(binarizer.R1.T @ binarizer.R1, eye_a, atol=1e-5)
        assert torch.allclose(binarizer.R2.T @ binarizer.R2, eye_b, atol=1e-5)
        assert torch.allclose(rotated.reshape(16, -1).norm(dim=1), x.reshape(16, -1).norm(dim=1), atol=1e-4)
        cosines.append(steps)
        flips.append((torch.sign(rotated) != torch.sign(x)).float().mean().item())
    mean = [sum(c[i] for c in cosines) / len(cosines) for i in range(4)]
    assert mean == pytest.approx([0.800, 0.817, 0.827, 0.834], abs=6e-3)  # spec: seed-dependent, 3 decimals
    assert all(0.4 < f < 0.6 for f in flips)  # about half the signs flip


def _rbnn_layer(theta: float) -> BinaryConv2d:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    layer = BinaryConv2d(4, 6, 3, padding=1, bias=False, weight_binarizer=RbnnWeight(conv.weight, RbnnSign(1, 1)),
                         input_binarizer=ActivationBinarizer(RbnnSign(1, 1), normalize="standardize"))
    layer.weight.data.copy_(conv.weight.data)
    layer.weight_binarizer.theta.data.fill_(theta)
    return layer


def test_rbnn_theta_endpoints():
    layer = _rbnn_layer(math.pi / 2)
    layer(torch.randn(2, 4, 5, 5)).sum().backward()
    assert torch.count_nonzero(layer.weight.grad) == 0  # sin(pi/2) == 1 in float32: exactly zero
    # theta = 0: Wt = What, so W gets exactly the gradient of the unrotated graph
    layer = _rbnn_layer(0.0)
    x = torch.randn(2, 4, 5, 5)
    layer(x).sum().backward()
    reference = layer.weight.detach().clone().requires_grad_(True)
    signs = surrogate_sign(standardize_rows(reference), RbnnSign(1, 1))
    a = layer.input_binarizer(x)
    out = torch.nn.functional.conv2d(a, signs, padding=1) * layer.weight_binarizer.alpha.view(1, -1, 1, 1)
    out.sum().backward()
    assert torch.count_nonzero(reference.grad) > 0
    assert torch.allclose(layer.weight.grad, reference.grad, atol=1e-6)


def test_rbnn_output_invariances():
    layer = _rbnn_layer(1.0).eval()
    x = torch.randn(3, 4, 5, 5)
    base = layer(x)
    shifted = x * torch.tensor([2.0, 0.5, 3.0]).view(3, 1, 1, 1) + torch.tensor([1.0, -2.0, 0.3]).view(3, 1, 1, 1)
    assert torch.equal(layer(shifted), base)  # x -> cx + d per sample
    layer.weight.data.mul_(7.5)
    assert torch.equal(layer(x), base)  # W -> cW


# --- ReCU ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("epoch", "tau"), [(0, 0.85), (150, 0.87314), (300, 0.90286), (450, 0.94101),
                                            (599, 0.98963)])
def test_recu_tau_schedule(epoch, tau):
    assert recu_tau(epoch, 600, 0.85, 0.99) == pytest.approx(tau, abs=1e-5)


def test_recu_worked_example():
    w = torch.tensor(W8).view(1, 8, 1, 1)
    binarizer = RecuWeight(w)
    w_hat = standardize_rows(w, eps=1e-5) * 2 * math.sqrt(2)
    assert w_hat.flatten().tolist() == pytest.approx(
        [1.4186, -5.1038, 0.3750, 4.0276, -0.6685, 0.2446, -2.4948, 2.2013], abs=1e-3)
    assert w_hat.abs().mean().item() == pytest.approx(2.0668, abs=1e-3)
    for tau, q, mask in ((0.85, 2.4883, [1, 0, 1, 0, 1, 1, 0, 1]), (0.99, 8.0853, [1] * 8)):
        binarizer.tau.fill_(tau)
        assert binarizer.clamp_bound(w_hat).item() == pytest.approx(q, abs=1e-3)
        latent = w.clone().requires_grad_(True)
        signs, _ = binarizer(latent)
        assert signs.flatten().tolist() == torch.sign(w - w.mean()).flatten().tolist()  # clamp keeps signs
        # gradient reaches What only where |What| <= Q
        w_hat_leaf = w_hat.detach().clone().requires_grad_(True)
        clamped = torch.clamp(w_hat_leaf, -binarizer.clamp_bound(w_hat), binarizer.clamp_bound(w_hat))
        surrogate_sign(clamped, ClippedSTE(None)).sum().backward()
        assert w_hat_leaf.grad.flatten().tolist() == mask


def test_recu_clamped_fraction_and_scale_invariance():
    torch.manual_seed(0)
    binarizer = RecuWeight(torch.zeros(1, 1))
    binarizer.tau.fill_(0.85)

    def clamped_fraction(w):
        w_hat = standardize_rows(w, eps=1e-5) * 2 * math.sqrt(2)
        return (w_hat.abs() > binarizer.clamp_bound(w_hat)).float().mean().item()

    laplace = torch.distributions.Laplace(0.0, 1.0).sample((64, 2304))
    gaussian = torch.randn(64, 2304)
    assert clamped_fraction(laplace) == pytest.approx(0.302, abs=0.01)  # ~ 2(1 - tau) = 0.3
    assert clamped_fraction(gaussian) == pytest.approx(0.336, abs=0.01)
    assert clamped_fraction(gaussian * 40) == pytest.approx(clamped_fraction(gaussian), abs=1e-3)


def test_recu_activation_gradient():
    g = grad_of(lambda a: surrogate_sign(a, ApproxSign()), [-1.2, -0.5, 0.0, 0.25, 0.5, 1.0])
    assert g.tolist() == pytest.approx([0, 1, 2, 1.5, 1, 0])


# --- SiMaN --------------------------------------------------------------------------------------------

def test_siman_worked_example_p0():
    w = torch.tensor(W8).view(1, 8, 1, 1)
    binarizer = SimanWeight(w)
    w_hat = standardize_rows(w, eps=1e-5)
    assert w_hat.flatten().tolist() == pytest.approx(
        [0.5016, -1.8045, 0.1326, 1.4240, -0.2364, 0.0865, -0.8820, 0.7783], abs=1e-3)
    signs, alpha = binarizer(torch.nn.Parameter(w.clone()))  # training mode: B recomputed
    assert binarizer.B.flatten().tolist() == [0, 1, 0, 1, 0, 0, 1, 1]
    assert signs.flatten().tolist() == [-1, 1, -1, 1, -1, -1, 1, 1]
    assert alpha.item() == pytest.approx(sum(abs(v) for v in W8) / 8)


def test_siman_balance_symmetry_and_gradient():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    binarizer = SimanWeight(w)
    signs, _ = binarizer(torch.nn.Parameter(w.clone()))
    assert (binarizer.B.sum(1) == 18).all()  # n = 36: exactly n/2 ones per row
    assert torch.equal(binarizer(torch.nn.Parameter(-w.clone()))[0], signs)  # Bw(-W) = Bw(W)
    # d/dWhat of sum(Bw * G) = sign(What) * G
    w_hat = standardize_rows(w, eps=1e-5).requires_grad_(True)
    x = w_hat.reshape(8, -1).abs()
    from slimkit.binary.binarizers import _ForwardValue
    bw = _ForwardValue.apply(x, 2 * binarizer.B - 1)
    g = torch.randn_like(bw)
    (bw * g).sum().backward()
    assert torch.allclose(w_hat.grad.reshape(8, -1), torch.sign(w_hat.detach().reshape(8, -1)) * g)


def test_siman_projection_p15_and_schedule():
    w = torch.nn.Parameter(torch.tensor(W8).view(1, 8, 1, 1))
    binarizer = SimanWeight(w.detach())
    binarizer.percent.fill_(15)
    binarizer.project(w.data)
    assert w.flatten().tolist() == pytest.approx(
        [0.5437, -1.5144, 0.1494, 1.5144, -0.2562, 0.1494, -0.9563, 0.8438], abs=1e-3)
    from slimkit.binary.modifiers import SimanConfig, SimanModifier

    method = SimanModifier(SimanConfig())
    method.layers = {"l": BinaryConv2d(8, 1, 1, weight_binarizer=binarizer, input_binarizer=torch.nn.Identity())}
    for epoch, p in ((0, 15), (100, 11.25), (200, 7.5), (399, 0.0375)):
        method.schedule(epoch, 400)
        assert binarizer.percent.item() == pytest.approx(p)


def test_siman_optimizer_groups():
    from slimkit.binary.modifiers import SimanConfig, SimanModifier
    from slimkit.models import resnet20
    from slimkit.recipe import TrainConfig
    from slimkit.train import TrainContext
    from slimkit.train.trainer import build_optimizer

    model = resnet20(block="bireal", activation="prelu")
    method = SimanModifier(SimanConfig())
    method.attach(model, TrainContext(model, epochs=10, steps_per_epoch=1))
    optimizer = build_optimizer(model, TrainConfig(weight_decay=5e-4), [method])
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    conv = model.layer2[0].conv1
    assert decay[id(conv.weight)] == 0 and decay[id(conv.weight_binarizer.alpha)] == 0
    assert decay[id(model.layer2[0].bn1.weight)] == 5e-4 and decay[id(model.conv1.weight)] == 5e-4


# --- baselines ----------------------------------------------------------------------------------------

def test_xnor_scale_and_clipped_ste():
    w = torch.tensor(W8).view(2, 4)
    signs, alpha = XnorWeight()(w)
    assert torch.equal(signs, torch.sign(w))
    assert alpha.tolist() == pytest.approx([1.025, 0.5375])
    assert grad_of(lambda x: surrogate_sign(x, ClippedSTE(1.0)), [-1.5, -1.0, 0.3, 2.0]).tolist() == [0, 1, 1, 0]


def test_irnet_power_of_two_scale_and_ede():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    signs, scale = IrNetWeight(Ede(1.0, 1.0))(w)
    w_hat = standardize_rows(w)
    assert torch.equal(signs, torch.sign(w_hat))
    assert torch.equal(torch.log2(scale), torch.round(torch.log2(w_hat.reshape(4, -1).abs().mean(1))))
    g = grad_of(lambda x: surrogate_sign(x, Ede(2.0, 0.5)), [0.0, 0.5])
    assert g.tolist() == pytest.approx([1.0, 1 - math.tanh(1.0) ** 2])
