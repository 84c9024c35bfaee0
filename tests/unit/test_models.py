"""Backbones and margin heads: shapes, sizes and the margin math checked by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from components.models import (
    BACKBONES, HEADS, ArcFace, CosFace, ResNetSmall, count_parameters, get_backbone, get_head, iresnet18,
)


def _by_hand_cos(head, emb):
    return F.normalize(emb.double()) @ F.normalize(head.weight.detach().double()).T


# ---------------------------------------------------------------- heads

def test_arcface_target_logit_is_s_cos_theta_plus_m_and_others_s_cos():
    torch.manual_seed(0)
    head = ArcFace(16, 10, s=64.0, m=0.5)
    emb, labels = torch.randn(8, 16), torch.arange(8) % 10
    logits = head(emb, labels).double()
    cos = _by_hand_cos(head, emb)
    theta = torch.acos(cos[torch.arange(8), labels])
    assert (theta + 0.5 < math.pi).all()  # the ordinary branch
    expected = 64.0 * cos.clone()
    expected[torch.arange(8), labels] = 64.0 * torch.cos(theta + 0.5)
    torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-4)
    mask = F.one_hot(labels, 10).bool()
    torch.testing.assert_close(logits[~mask], 64.0 * cos[~mask], atol=1e-4, rtol=1e-5)


def test_arcface_past_pi_uses_insightface_threshold():
    """theta + m > pi: target logit s * (cos(theta) - m sin(m)), which keeps falling with theta."""
    torch.manual_seed(0)
    head = ArcFace(16, 4, s=10.0, m=0.5)
    labels = torch.tensor([1, 2])
    emb = -head.weight.detach()[labels] + 1e-3 * torch.randn(2, 16)  # theta close to pi
    cos_t = _by_hand_cos(head, emb)[torch.arange(2), labels]
    assert (torch.acos(cos_t) + 0.5 > math.pi).all()
    got = head(emb, labels).double()[torch.arange(2), labels]
    torch.testing.assert_close(got, 10.0 * (cos_t - 0.5 * math.sin(0.5)), atol=1e-4, rtol=1e-5)
    # easy margin: no margin at all where cos <= 0
    easy = ArcFace(16, 4, s=10.0, m=0.5, easy_margin=True)
    easy.weight.data.copy_(head.weight.data)
    torch.testing.assert_close(easy(emb, labels).double()[torch.arange(2), labels], 10.0 * cos_t,
                               atol=1e-4, rtol=1e-5)


def test_cosface_target_logit_is_s_times_cos_minus_m():
    torch.manual_seed(1)
    head = CosFace(16, 10, s=30.0, m=0.35)
    emb, labels = torch.randn(6, 16), torch.tensor([0, 3, 3, 9, 5, 1])
    cos = _by_hand_cos(head, emb)
    expected = 30.0 * cos.clone()
    expected[torch.arange(6), labels] = 30.0 * (cos[torch.arange(6), labels] - 0.35)
    torch.testing.assert_close(head(emb, labels).double(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_cosine_has_no_margin_no_scale_and_unit_weights(name):
    torch.manual_seed(2)
    head = get_head(name, 16, 7)
    emb = torch.randn(5, 16) * 3.0
    cos = head.cosine(emb)
    torch.testing.assert_close(cos.double(), _by_hand_cos(head, emb), atol=1e-6, rtol=1e-6)
    assert cos.abs().max() <= 1.0
    # scaling an embedding does not change anything (both sides are L2-normalised)
    torch.testing.assert_close(head.cosine(emb * 10), cos, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_gradients_reach_embeddings_and_class_centres(name):
    torch.manual_seed(3)
    head = get_head(name, 16, 7)
    emb = torch.randn(5, 16, requires_grad=True)
    F.cross_entropy(head(emb, torch.tensor([0, 1, 2, 3, 4])), torch.tensor([0, 1, 2, 3, 4])).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0 and torch.isfinite(emb.grad).all()
    assert head.weight.grad.abs().sum() > 0


def test_margin_makes_training_logit_smaller_than_inference_logit():
    torch.manual_seed(4)
    for head in (ArcFace(16, 5), CosFace(16, 5)):
        emb, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 3])
        train_t = head(emb, labels)[torch.arange(4), labels]
        infer_t = head.s * head.cosine(emb)[torch.arange(4), labels]
        assert (train_t < infer_t).all()


def test_get_head_unknown_name():
    with pytest.raises(ValueError, match="arcface.*cosface"):
        get_head("sphereface", 8, 2)


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("size", [16, 24, 64])
def test_resnet_small_any_input_size(size):
    net = ResNetSmall(embedding_dim=32).eval()
    assert net(torch.randn(2, 3, size, size)).shape == (2, 32)


@pytest.mark.parametrize("channels", [189, 192])
def test_resnet_small_on_dct_grids(channels):
    net = get_backbone("resnet_small", in_channels=channels, embedding_dim=64, stem_stride=1).eval()
    assert net(torch.randn(3, channels, 8, 8)).shape == (3, 64)
    assert net(torch.randn(3, channels, 14, 14)).shape == (3, 64)


def test_resnet_small_default_size():
    n = count_parameters(ResNetSmall())
    assert 0.9e6 <= n <= 1.4e6, n


def test_iresnet18_112px_gives_512d():
    net = iresnet18().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 112, 112)).shape == (2, 512)
    assert 20e6 < count_parameters(net) < 30e6  # insightface iresnet18 is ~24M


@pytest.mark.parametrize("name", ["iresnet18", "iresnet50"])
@pytest.mark.parametrize("channels,size", [(3, 16), (189, 8), (3, 20)])
def test_iresnet_in_channels_and_input_size(name, channels, size):
    net = get_backbone(name, in_channels=channels, embedding_dim=32, input_size=size).eval()
    with torch.no_grad():
        assert net(torch.randn(2, channels, size, size)).shape == (2, 32)


def test_iresnet_wrong_input_size_is_a_clear_error():
    net = get_backbone("iresnet18", input_size=16).eval()
    with pytest.raises(ValueError, match="input_size"):
        net(torch.randn(2, 3, 32, 32))


def test_backbones_train_end_to_end():
    for name in BACKBONES:
        if name == "iresnet50":
            continue  # same code as iresnet18, only deeper
        net = get_backbone(name, embedding_dim=8, input_size=16)
        net(torch.randn(4, 3, 16, 16)).sum().backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_get_backbone_unknown_name_lists_known():
    with pytest.raises(ValueError) as err:
        get_backbone("vit_huge")
    for name in ("resnet_small", "iresnet18", "iresnet50"):
        assert name in str(err.value)


def test_count_parameters():
    assert count_parameters(torch.nn.Linear(3, 4)) == 16
