import pytest
import torch

from trilevel.token_pruning import cls_attention_scores, num_kept_tokens, select_topk_tokens


def test_num_kept_tokens_ceil_and_compounding():
    assert num_kept_tokens(49, 0.7) == 35  # ceil(34.3)
    assert num_kept_tokens(35, 0.7) == 25  # ceil(24.5)
    assert num_kept_tokens(25, 0.7) == 18  # ceil(17.5)
    assert num_kept_tokens(196, 0.7) == 138
    assert num_kept_tokens(10, 0.7) == 7
    assert num_kept_tokens(5, 1.0) == 5
    assert num_kept_tokens(3, 0.01) == 1


def test_select_exact_tokens_on_crafted_scores():
    B, P, Np, C = 2, 1, 6, 4
    x = torch.arange(B * (P + Np) * C, dtype=torch.float32).reshape(B, P + Np, C)
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.05, 0.2],
                           [0.6, 0.1, 0.2, 0.3, 0.5, 0.4]])
    out, idx = select_topk_tokens(x, scores, keep_ratio=0.5, num_prefix_tokens=P)
    assert idx.tolist() == [[1, 2, 3], [0, 4, 5]]  # top-3 per row, original order
    assert out.shape == (B, P + 3, C)
    assert torch.equal(out[:, 0], x[:, 0])  # [CLS] kept
    assert torch.equal(out[0, 1:], x[0, P + torch.tensor([1, 2, 3])])
    assert torch.equal(out[1, 1:], x[1, P + torch.tensor([0, 4, 5])])


def test_two_prefix_tokens_always_kept():
    x = torch.randn(1, 2 + 4, 3)
    out, idx = select_topk_tokens(x, torch.tensor([[0.1, 0.4, 0.3, 0.2]]), 0.25, num_prefix_tokens=2)
    assert idx.tolist() == [[1]]
    assert torch.equal(out, torch.cat([x[:, :2], x[:, 3:4]], dim=1))


def test_fuse_weighted_mean():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    scores = torch.tensor([[0.5, 0.1, 0.3]])  # keep token 0; fuse tokens 1 (w .1) and 2 (w .3)
    out, idx = select_topk_tokens(x, scores, 0.3, num_prefix_tokens=1, fuse=True)
    assert idx.tolist() == [[0]]  # ceil(0.9) = 1
    assert out.shape == (1, 1 + 1 + 1, 2)
    dropped = [1, 2]
    w = scores[0, dropped] / scores[0, dropped].sum()
    expected = (w[:, None] * x[0, 1 + torch.tensor(dropped)]).sum(0)
    assert torch.allclose(out[0, -1], expected)


def test_no_fused_token_when_nothing_dropped():
    x = torch.randn(2, 5, 3)
    out, idx = select_topk_tokens(x, torch.rand(2, 4), 1.0, fuse=True)
    assert out.shape == x.shape and idx.shape == (2, 4)


def test_gradient_reaches_kept_tokens_only():
    x = torch.randn(1, 4, 2, requires_grad=True)
    scores = torch.tensor([[0.9, 0.1, 0.5]], requires_grad=True)
    out, _ = select_topk_tokens(x, scores, 0.6)
    out.sum().backward()
    assert x.grad[0, :, 0].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert scores.grad is None  # selection carries no gradient


def test_cls_attention_scores_head_mean():
    probs = torch.zeros(1, 2, 4, 4)
    probs[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    probs[0, 1, 0] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    probs[0, :, 1] = 9.0  # other query rows must not matter
    assert torch.allclose(cls_attention_scores(probs, 1), torch.tensor([[0.25, 0.25, 0.25]]))
    assert torch.allclose(cls_attention_scores(probs, 2), torch.tensor([[0.25, 0.25]]))


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.01, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="keep_ratio"):
        select_topk_tokens(torch.randn(1, 5, 2), torch.rand(1, 4), ratio)


def test_bad_scores_shape():
    with pytest.raises(ValueError, match="scores"):
        select_topk_tokens(torch.randn(1, 5, 2), torch.rand(1, 5), 0.5)
