"""Quantizers, distillation losses and their modifiers (spec sections 5 and 6)."""

import importlib.util
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import slimkit
from slimkit.distill.losses import graph_kd, hinton_kd, knn_mask, rkd_distance, similarity_graph
from slimkit.quant import LevelQuantizer, UniformQuantizer, apot_levels, sp2_levels
from slimkit.quant.attach import weight_quantization
from slimkit.recipe import Recipe

# --- level sets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("b", "expected"), [
    (2, [0, 0.25, 0.5, 1]),
    (3, [0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1]),
    (4, [0, 0.02083, 0.04167, 0.0625, 0.08333, 0.125, 0.16667, 0.1875, 0.25, 0.33333, 0.375, 0.5, 0.66667,
         0.6875, 0.75, 1]),
])
def test_apot_level_sets(b, expected):
    assert apot_levels(b).tolist() == pytest.approx(expected, abs=1e-5)


def test_sp2_four_bit_magnitudes():
    assert sp2_levels(4).tolist() == pytest.approx([0, 1 / 8, 1 / 4, 1 / 2, 5 / 8, 3 / 4, 1])
    assert len(sp2_levels(3)) == 3 and sp2_levels(2).tolist() == [0, 1]


# --- quantizers ----------------------------------------------------------------------------------------

def _quantizers():
    torch.manual_seed(0)
    uniform = UniformQuantizer(4, channels=6, signed=True)
    uniform.calibrate(torch.randn(6, 3, 3, 3), "mse")
    return [uniform, LevelQuantizer(apot_levels(3), True, 3.0, standardize=True),
            LevelQuantizer(sp2_levels(4), True, 1.5, standardize=False),
            LevelQuantizer(apot_levels(4), False, 6.0, standardize=False)]


@pytest.mark.parametrize("quantizer", _quantizers(), ids=["lsq", "apot-w", "sp2-w", "apot-a"])
def test_quantizers_are_idempotent(quantizer):
    x = torch.randn(6, 3, 3, 3) * 2
    if isinstance(quantizer, LevelQuantizer) and not quantizer.signed:
        x = x.abs()
    for mode in (True, False):
        quantizer.train(mode)
        once = quantizer(x)
        if not (isinstance(quantizer, LevelQuantizer) and quantizer.standardize):  # std changes after rounding
            assert torch.allclose(quantizer(once), once, atol=1e-6)
    levels = torch.unique(quantizer.train()(x) / (x.std() + 1e-12 if quantizer.standardize else 1)) \
        if isinstance(quantizer, LevelQuantizer) else None
    if levels is not None:
        grid = quantizer.levels * quantizer.alpha.detach()
        assert all(torch.isclose(v, grid, atol=1e-5).any() for v in levels)


def test_uniform_forward_is_on_the_grid_and_export_path_agrees():
    torch.manual_seed(0)
    q = UniformQuantizer(4, channels=3, signed=True)
    w = torch.randn(3, 500)
    q.calibrate(w, "minmax")
    train_out = q.train()(w).detach()
    ints = train_out / q.step.detach()[:, None]
    assert torch.allclose(ints, ints.round(), atol=1e-5) and ints.min() >= -8 and ints.max() <= 7
    # the export path (torch.fake_quantize, x * (1/s)) agrees with LSQ's x / s up to float ties at .5
    diff = (q.eval()(w) - train_out).abs()
    assert (diff == 0).float().mean() > 0.99 and (diff <= q.step.detach()[:, None] + 1e-6).all()


def test_ste_and_lsq_gradients():
    q = UniformQuantizer(3, signed=False)
    q.calibrate(torch.tensor([0.0, 7.0]), "minmax")  # step 1, range [0, 7]
    x = torch.tensor([-1.0, 0.4, 3.6, 6.5, 9.0], requires_grad=True)
    q.train()(x).sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 0]  # identity inside the range, zero outside
    # LSQ step gradient: (round(v) - v) inside, the bound outside, scaled by 1/sqrt(N * Qp)
    v = torch.tensor([-1.0, 0.4, 3.6, 6.5, 9.0])
    expected = torch.where(v < 0, torch.tensor(0.0), torch.where(v > 7, torch.tensor(7.0), v.round() - v)).sum()
    assert q.step.grad.item() == pytest.approx(expected.item() / math.sqrt(5 * 7), abs=1e-6)
    level = LevelQuantizer(apot_levels(2), True, 1.0, standardize=False)
    y = torch.tensor([0.3, -2.0, 0.9], requires_grad=True)
    level(y).sum().backward()
    assert y.grad.tolist() == [1, 0, 1]
    # APoT's clip gradient: q/alpha - x/alpha inside, sign(x) outside
    assert level.alpha.grad.item() == pytest.approx((0.25 - 0.3) + (-1) + (1 - 0.9))


def test_sp2_clip_is_calibrated_to_least_error():
    torch.manual_seed(0)
    w = torch.randn(4000)
    q = LevelQuantizer(sp2_levels(2), True, 1.0, standardize=False)
    q.calibrate(w)
    assert q.alpha.item() < 0.5 * w.abs().max().item()  # not the maximum, which zeroes most weights at 2 bits
    assert (q(w) != 0).float().mean() > 0.3
    errors = {}
    for alpha in (q.alpha.item(), w.abs().max().item()):
        probe = LevelQuantizer(sp2_levels(2), True, alpha, standardize=False)
        errors[alpha] = ((probe(w) - w) ** 2).mean().item()
    assert errors[q.alpha.item()] < errors[w.abs().max().item()]


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_observers_set_sensible_steps(observer):
    torch.manual_seed(0)
    x = torch.randn(100_000).abs()
    q = UniformQuantizer(8)
    q.calibrate(x, observer)
    assert not bool(q.signed)
    bound = q.step.item() * q.qmax
    assert 0.5 * x.max().item() < bound <= x.max().item() + 1e-6
    if observer == "minmax":
        assert bound == pytest.approx(x.max().item())


# --- graph KD (spec section 5) -------------------------------------------------------------------------

XT = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
XS = torch.tensor([[1.0, 0.2], [1.0, 1.0], [0.2, 1.0]])


def test_graph_kd_worked_example():
    expected = torch.tensor([[0, 0.7071, 0], [0.7071, 0, 0.7071], [0, 0.7071, 0]])
    assert torch.allclose(similarity_graph(XT), expected, atol=1e-4)
    gs = similarity_graph(XS)
    assert [gs[0, 1].item(), gs[0, 2].item(), gs[1, 2].item()] == pytest.approx([0.5848, 0.3161, 0.5848], abs=1e-4)
    assert graph_kd([XS], [XT]).item() == pytest.approx(0.25975, abs=1e-5)


def test_graph_properties_and_invariances():
    torch.manual_seed(0)
    x = torch.rand(16, 10)
    g = similarity_graph(x)
    assert torch.allclose(g, g.T) and torch.all(torch.diagonal(g) == 0)
    assert torch.linalg.eigvalsh(g.double()).max().item() == pytest.approx(1.0, abs=1e-5)
    teacher = torch.rand(16, 7)
    base = graph_kd([x], [teacher])
    scale = torch.rand(16, 1) + 0.5
    assert graph_kd([x * scale], [teacher]).item() == pytest.approx(base.item(), abs=1e-5)  # per-sample scale
    wider = torch.cat([x, torch.zeros(16, 30)], dim=1)
    assert graph_kd([wider], [teacher]).item() == pytest.approx(base.item(), abs=1e-5)  # student width
    mask = knn_mask(similarity_graph(teacher), 4)
    assert torch.equal(mask, mask.T) and (mask.sum(1) >= 4).all()


def test_isolated_sample_gives_no_nan():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # sample 0 is orthogonal to the rest
    g = similarity_graph(x)
    assert torch.isfinite(g).all() and g[0].abs().sum() == 0
    assert torch.isfinite(graph_kd([x], [XT]))


def test_hinton_kd_has_the_t_squared_factor_and_rkd_is_scale_free():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    kl = nn.functional.kl_div(nn.functional.log_softmax(s / 4, 1), nn.functional.softmax(t / 4, 1),
                              reduction="batchmean")
    assert hinton_kd(s, t, 4.0).item() == pytest.approx(16 * kl.item(), rel=1e-6)
    assert hinton_kd(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    f = torch.randn(8, 5)
    assert rkd_distance([f * 3], [f]).item() == pytest.approx(0.0, abs=1e-6)


# --- modifiers from recipes -----------------------------------------------------------------------------

def _digits(stages, epochs=2, baseline=3, name="qd"):
    return Recipe.from_dict({
        "name": name, "model": {"name": "lenet", "width": 0.5}, "data": {"name": "digits", "batch_size": 64},
        "baseline": {"epochs": baseline, "lr": 0.05} if baseline else None,
        "train": {"epochs": epochs, "lr": 0.02}, "stages": stages,
        "measure": {"batch_sizes": [1], "repeats": 2, "warmup": 1}})


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    slimkit.run_recipe(_digits([], epochs=4, baseline=0, name="teacher"), out, progress=False)
    return out / "model.pt"


@pytest.mark.parametrize("method", ["uniform", "sp2", "apot"])
def test_every_quantizer_runs_from_a_recipe_and_reloads(tmp_path, method):
    run = slimkit.run_recipe(_digits([{"quantize": {"method": method, "bits": 4}}]), tmp_path, progress=False)
    layer = run.model.classifier[1]
    assert weight_quantization(layer).bits == 4 and weight_quantization(run.model.features[0]).bits == 8
    comp = run.metrics["models"]["compressed"]["measurement"]
    assert comp["compressed_bytes"] < run.metrics["models"]["dense"]["measurement"]["compressed_bytes"] / 4
    reloaded = slimkit.load(tmp_path / "model.pt")
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(reloaded(x), run.model.eval()(x))


def test_ptq_is_calibration_without_training(tmp_path):
    run = slimkit.run_recipe(_digits([{"quantize": {"method": "uniform", "bits": 8, "observer": "percentile"}}],
                                     epochs=0), tmp_path, progress=False)
    dense, comp = (run.metrics["models"][k]["test_acc"] for k in ("dense", "compressed"))
    assert run.metrics["models"]["compressed"]["history"] == [] and abs(dense - comp) < 0.02


@pytest.mark.parametrize(("method", "extra"), [("hinton", {"temperature": 4.0}),
                                              ("graph_kd", {"taps": [["features.5", "features.5"]], "weight": 25}),
                                              ("rkd", {"taps": [["classifier.2", "classifier.2"]]})])
def test_every_distiller_runs_from_a_recipe(tmp_path, teacher_path, method, extra):
    stage = {"distill": {"method": method, "teacher": str(teacher_path), **extra}}
    run = slimkit.run_recipe(_digits([stage], baseline=0), tmp_path, progress=False)
    assert run.metrics["stages"][0]["teacher"] == str(teacher_path)
    # the term the modifier adds: positive and differentiable for a fresh student, zero for the teacher itself
    from slimkit.recipe import build_modifier, parse_stage
    from slimkit.train import TrainContext

    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for student, zero in ((slimkit.models.lenet(1, 10, 8, 0.5), False), (slimkit.load(teacher_path), True)):
        modifier = build_modifier(parse_stage(stage))
        modifier.attach(student, TrainContext(student, epochs=1, steps_per_epoch=1))
        term = modifier.loss(student(x), (x, y), None)
        if zero:
            assert term.item() == pytest.approx(0.0, abs=1e-5)
        else:
            term.backward()
            assert term.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_unknown_tap_is_a_clear_error(tmp_path, teacher_path):
    stage = {"distill": {"method": "graph_kd", "teacher": str(teacher_path), "taps": [["layer9", "features.5"]]}}
    with pytest.raises(slimkit.SlimkitError, match="the student has no module 'layer9'"):
        slimkit.run_recipe(_digits([stage], baseline=0), tmp_path, progress=False)


@pytest.mark.slow
def test_prune_then_distill_then_quantize(tmp_path, teacher_path):
    stages = [{"prune": {"method": "optg", "sparsity": 0.9, "end_epoch": 2}},
              {"distill": {"method": "graph_kd", "teacher": str(teacher_path), "taps": [["features.5", "features.5"]]}},
              {"quantize": {"method": "uniform", "bits": 8}}]
    run = slimkit.run_recipe(_digits(stages, epochs=6), tmp_path, progress=False)
    weights = torch.cat([run.model.features[3].weight.reshape(-1), run.model.classifier[1].weight.reshape(-1)])
    assert int((weights == 0).sum()) >= round(0.9 * weights.numel())  # masks survived quantization
    assert weight_quantization(run.model.classifier[1]).bits == 8
    assert run.metrics["models"]["compressed"]["test_acc"] > 0.8
    reloaded = slimkit.load(tmp_path / "model.pt")
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(reloaded(x), run.model.eval()(x))
    if importlib.util.find_spec("onnxruntime"):  # and it deploys: int8 in onnxruntime, the zeros kept
        import onnx

        from slimkit.quant.onnx_export import OnnxModel, export_onnx

        path = export_onnx(reloaded, tmp_path / "model.onnx", (1, 8, 8), calibration=[torch.randn(64, 1, 8, 8)])
        exported = onnx.numpy_helper.to_array(next(t for t in onnx.load(str(path)).graph.initializer
                                                   if t.dims == list(run.model.classifier[1].weight.shape)))
        assert int((exported == 0).sum()) == int((run.model.classifier[1].weight == 0).sum())
        # the classes of real digits, where the QAT model is clear (its top two logits 4 steps of the onnx graph's
        # output grid apart): onnxruntime's int8 picks the same class; random noise would meet near-ties
        images = torch.from_numpy(load_digits().images[:256]).float().unsqueeze(1) / 16
        with torch.no_grad():
            reference, got = reloaded(images), OnnxModel(path)(images)
        top = reference.topk(2, dim=1).values
        clear = (top[:, 0] - top[:, 1]) > 4 * _logits_step(path)
        assert clear.sum() >= 128 and (got.argmax(1) == reference.argmax(1))[clear].all()


def _logits_step(path) -> float:
    """The step of the exported graph's last quantizer (the logits' grid): its final DequantizeLinear's scale."""
    import onnx

    graph = onnx.load(str(path)).graph
    last = [n for n in graph.node if n.op_type == "DequantizeLinear"][-1]
    scale = next(t for t in graph.initializer if t.name == last.input[1])
    return float(onnx.numpy_helper.to_array(scale).reshape(-1)[0])
