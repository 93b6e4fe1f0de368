import pytest
import torch

from trilevel.attention_sparsity import connection_mask, masked_attention, topk_connection_mask


def test_topk_mask_exact_with_ties():
    probs = torch.tensor([[[0.5, 0.2, 0.2, 0.1],    # k=2 -> threshold 0.2: both ties kept
                           [0.1, 0.6, 0.2, 0.1],    # threshold 0.2
                           [0.25, 0.25, 0.25, 0.25],  # all tied: all kept
                           [0.0, 0.0, 0.0, 1.0]]])  # threshold 0 (fewer than k non-zero): all kept
    mask = topk_connection_mask(probs, 0.5)
    assert mask.tolist() == [[[True, True, True, False],
                              [False, True, True, False],
                              [True, True, True, True],
                              [True, True, True, True]]]


def test_topk_mask_ratio_one_keeps_all():
    probs = torch.rand(2, 5, 5).softmax(-1)
    assert topk_connection_mask(probs, 1.0).all()


def test_connection_mask_restricts_to_kept_and_keeps_prefix():
    # 1 prefix + 4 patches; keep patches 1 and 3
    A = torch.tensor([[[0.2, 0.2, 0.2, 0.2, 0.2],
                       [0.1, 0.5, 0.1, 0.2, 0.1],
                       [0.1, 0.1, 0.6, 0.1, 0.1],
                       [0.1, 0.1, 0.1, 0.3, 0.4],
                       [0.2, 0.3, 0.1, 0.1, 0.3]]])
    kept = torch.tensor([[1, 3]])  # full-sequence tokens 2 and 4
    mask = connection_mask(A, kept, attn_keep_ratio=0.5, num_prefix_tokens=1)
    # kept block: rows/cols (tok2, tok4): [[0.6, 0.1], [0.1, 0.3]] -> keep 1 per row
    assert mask.tolist() == [[[True, True, True],
                              [True, True, False],
                              [True, False, True]]]
    with_extra = connection_mask(A, kept, 0.5, 1, num_extra_tokens=1)
    assert with_extra.shape == (1, 4, 4)
    assert with_extra[0, 3].all() and with_extra[0, :, 3].all()


@pytest.mark.parametrize("fused", [True, False])
def test_masked_attention_zero_probability_for_cut(fused):
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    v = torch.eye(3).expand(1, 2, 3, 3).contiguous()  # output rows = attention probabilities
    mask = torch.tensor([[[True, True, False], [True, True, True], [True, False, True]]])
    out = masked_attention(q, k, v, mask, scale=0.5, fused=fused)
    assert out[0, :, 0, 2].abs().max() < 1e-6 and out[0, :, 2, 1].abs().max() < 1e-6
    assert torch.allclose(out.sum(-1), torch.ones(1, 2, 3), atol=1e-6)
    dense = masked_attention(q, k, v, None, scale=0.5, fused=fused)
    assert (dense[0, :, 0, 2] > 0).all()


def test_fused_and_unfused_agree():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.rand(2, 5, 5) > 0.4
    mask[:, :, 0] = True
    a = masked_attention(q, k, v, mask, scale=0.5, fused=True)
    b = masked_attention(q, k, v, mask, scale=0.5, fused=False)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="attn_keep_ratio"):
        topk_connection_mask(torch.rand(1, 3, 3), ratio)
