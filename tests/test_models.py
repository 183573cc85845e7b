"""Model shapes, parameter names and the normalization layer."""

import pytest
import torch

from atlib.core.compat import import_torchvision
from atlib.models.resnet import ARCHS, build_model


@pytest.mark.parametrize("arch,size,planes", [("resnet8", 28, 256), ("resnet18", 32, 512), ("resnet50", 32, 2048)])
def test_cifar_shapes(arch, size, planes):
    m = build_model(arch, 7, in_channels=3, width=0.125 if arch != "resnet8" else 1.0).eval()
    x = torch.rand(2, 3, size, size)
    assert m(x).shape == (2, 7)
    assert m.features(x).shape == (2, m.feature_dim)
    assert m.feature_dim == int(planes * (0.125 if arch != "resnet8" else 1.0))


def test_imagenet_resnet50_matches_torchvision_names_and_outputs():
    tv = import_torchvision()
    ref = tv.models.resnet50(num_classes=10).eval()
    ours = build_model("resnet50_imagenet", 10).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert missing == ["normalize.mean", "normalize.std"] and unexpected == []
    # Identity normalization -> the two networks compute the same function.
    ours.normalize.mean.zero_()
    ours.normalize.std.fill_(1.0)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_cifar_resnet18_param_names_follow_torchvision():
    names = set(build_model("resnet18", 10).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight", "layer4.1.bn2.weight",
            "fc.weight", "fc.bias", "normalize.mean"} <= names
    assert build_model("resnet18", 10).conv1.kernel_size == (3, 3)  # CIFAR stem


def test_normalization_inside_model():
    m = build_model("resnet8", 3, 3, normalization="cifar10")
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    gray = build_model("resnet8", 3, 1, normalization="cifar10")
    assert gray.normalize.mean.shape == (1, 1, 1, 1)


def test_last_bn_is_before_head():
    r18 = build_model("resnet18", 3)
    assert r18.last_bn() is r18.layer4[-1].bn2
    m = build_model("resnet50", 3, width=0.125)
    assert m.last_bn() is m.layer4[-1].bn3
    assert m.last_bn().num_features == m.feature_dim


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        build_model("vgg", 3)
    assert {"resnet8", "resnet18", "resnet50", "resnet50_imagenet"} <= set(ARCHS)


def test_job_memory_table_covers_every_arch_and_grows_with_the_network():
    from atlib.models.resnet import JOB_MEM_MB, OTHER_MEM_MB, job_mem_mb

    assert set(JOB_MEM_MB) == set(ARCHS)
    for job in OTHER_MEM_MB:
        sizes = [job_mem_mb(a, job) for a in ("resnet8", "resnet18", "resnet50")]
        assert sizes == sorted(sizes), job
    assert job_mem_mb("wrn28_10", "transfer") == OTHER_MEM_MB["transfer"]  # an imported zoo network
    with pytest.raises(KeyError):
        job_mem_mb("resnet8", "fisher")
