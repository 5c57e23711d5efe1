import math

import torch

from slimkit.metrics import compare_latency, measure
from slimkit.models import lenet
from slimkit.sparsity import add_mask, remove_masks


def test_lenet_counts_by_hand():
    m = measure(lenet(in_channels=1, input_size=28), (1, 28, 28), latency=False)
    # conv1 20x1x5x5+20, conv2 50x20x5x5+50, fc1 500x2450+500, fc2 10x500+10
    assert m.params == 520 + 25_050 + 1_225_500 + 5_010
    # per-sample MACs: 28*28*20*25 + 14*14*50*500 + 2450*500 + 500*10
    assert m.macs == 392_000 + 4_900_000 + 1_225_000 + 5_000
    assert m.effective_macs == m.macs and m.nonzeros == m.params
    assert m.dense_bytes == 4 * m.params and m.compressed_bytes == m.dense_bytes
    assert [layer.name for layer in m.layers] == ["features.0", "features.3", "classifier.1", "classifier.3"]


def test_sparse_model_counts_bytes_and_effective_macs():
    model = lenet(in_channels=1, input_size=28)
    mask = add_mask(model.classifier[1])
    mask.mask.view(-1)[: int(0.9 * mask.mask.numel())] = False  # 90% of fc1 removed
    masked = measure(model, (1, 28, 28), latency=False)
    remove_masks(model)
    baked = measure(model, (1, 28, 28), latency=False)
    for m in (masked, baked):  # a mask and the squashed weights count the same
        fc1 = m.layers[2]
        assert fc1.weight_nonzeros == 122_500 and fc1.sparsity == 0.9 and fc1.type == "Linear"
        assert fc1.effective_macs == 122_500 and m.effective_macs == m.macs - 1_225_000 + 122_500
        assert m.nonzeros == m.params - 1_102_500
        sparse_fc1 = 122_500 * 4 + math.ceil(1_225_000 / 8)
        assert m.compressed_bytes == m.dense_bytes - 1_225_000 * 4 + sparse_fc1


def test_latency_reports_medians_and_restores_threads():
    before = torch.get_num_threads()
    model = lenet(in_channels=1, input_size=8)
    m = measure(model, (1, 8, 8), batch_sizes=(1, 4), threads=1, repeats=3, warmup=1)
    assert set(m.latency_ms) == {"1", "4"} and all(v["median"] > 0 for v in m.latency_ms.values())
    assert m.threads == 1 and torch.get_num_threads() == before
    both = compare_latency({"a": model, "b": lenet(in_channels=1, input_size=8)}, (1, 8, 8), batch_sizes=(2,),
                           repeats=3, warmup=1)
    assert set(both) == {"a", "b"} and set(both["a"]) == {"2"}
    assert model.training  # measuring does not leave the model in eval mode
