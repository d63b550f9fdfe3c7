from __future__ import annotations

import pytest
import torch
from einops import rearrange

from stssl.encoders.vit import VideoViT, vit_base, vit_micro, vit_micro_divided
from stssl.types import EncoderOutput

MICRO = {"vit_micro": vit_micro, "vit_micro_divided": vit_micro_divided}


@pytest.mark.parametrize("name", sorted(MICRO))
def test_contract_shapes_pooling_grads(name: str) -> None:
    torch.manual_seed(0)
    enc = MICRO[name]()
    out = enc(torch.rand(2, 3, 8, 32, 32))
    assert isinstance(out, EncoderOutput)
    assert len(out.pyramid) == len(enc.spec.channels) == 4
    for feat, ch, (st, sh, sw) in zip(out.pyramid, enc.spec.channels, enc.spec.strides, strict=True):
        assert tuple(feat.shape) == (2, ch, 8 // st, 32 // sh, 32 // sw)
    assert enc.spec.strides[-1] == (2, 8, 8) and enc.spec.min_frames == 2
    assert out.dense is out.pyramid[-1]
    torch.testing.assert_close(out.pooled, out.dense.mean(dim=(2, 3, 4)))
    # the final norm is on the last stage only: its tokens have zero mean over D, the others do not
    assert out.dense.mean(dim=1).abs().max() < 1e-4
    assert out.pyramid[0].mean(dim=1).abs().max() > 1e-3
    loss = sum(f.square().mean() for f in out.pyramid)
    loss.backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


def test_default_out_indices_are_evenly_spaced() -> None:
    assert VideoViT(dim=8, depth=12, heads=2, patch=4, clip_size=(2, 8, 8)).out_indices == (2, 5, 8, 11)
    assert vit_micro().out_indices == (0, 1, 2, 3)
    assert VideoViT(dim=8, depth=2, heads=2, patch=4, clip_size=(2, 8, 8)).out_indices == (0, 1)
    with pytest.raises(ValueError, match="out_indices must be increasing block indices ending at depth - 1 = 3"):
        vit_micro(out_indices=(0, 2))


def test_pos_embedding_interpolates_to_other_clip_sizes() -> None:
    torch.manual_seed(0)
    enc = vit_micro()  # positions for 8x32x32 -> grid (4, 4, 4)
    assert enc.grid_size(4, 48, 64) == (2, 6, 8)
    out = enc(torch.rand(1, 3, 4, 48, 64))
    assert tuple(out.dense.shape) == (1, 64, 2, 6, 8)
    assert enc.output_size(4, 48, 64) == [(2, 6, 8)] * 4
    # at the reference grid the tables are used as they are: pos[t, h, w] = temporal[t] + spatial[h, w]
    pos = rearrange(enc.pos_embed((4, 4, 4)), "(t h w) D -> D t h w", t=4, h=4)
    torch.testing.assert_close(pos[:, 2, 1, 3], enc.pos_temporal[0, :, 2] + enc.pos_spatial[0, :, 1, 3])
    # interpolation keeps the value range and is exact for constant tables
    with torch.no_grad():
        enc.pos_spatial.fill_(0.5)
        enc.pos_temporal.fill_(0.25)
    torch.testing.assert_close(enc.pos_embed((3, 5, 7)), torch.full((105, 64), 0.75))


def test_sizes_not_multiple_of_tubelet_are_a_clear_error() -> None:
    enc = vit_micro()
    with pytest.raises(ValueError, match=r"T=5, H=32, W=32 is not a positive multiple of the tubelet 2x8x8"):
        enc(torch.rand(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match=r"VideoViT input: expected shape \(B 3 T H W\)"):
        enc(torch.rand(1, 1, 4, 32, 32))
    with pytest.raises(ValueError, match="unknown attention 'axial'; choose from"):
        vit_micro(attention="axial")


def _divided_from_joint() -> tuple[VideoViT, VideoViT]:
    torch.manual_seed(0)
    joint = vit_micro().eval()
    divided = vit_micro_divided().eval()
    missing, unexpected = divided.load_state_dict(joint.state_dict(), strict=False)
    assert not unexpected and missing and all(".attn_t." in k or ".norm_t." in k for k in missing)
    return joint, divided


def test_divided_differs_from_joint_and_reduces_to_it_on_one_slot() -> None:
    joint, divided = _divided_from_joint()
    x = torch.rand(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(joint(x).dense, divided(x).dense, atol=1e-3)
        for block in divided.blocks:  # temporal branch off: divided = attention within each slot
            block.attn_t.proj.weight.zero_()
            block.attn_t.proj.bias.zero_()
        one_slot = x[:, :, :2]  # T' = 1: spatial attention within the slot is joint attention
        torch.testing.assert_close(divided(one_slot).dense, joint(one_slot).dense)
        assert not torch.allclose(divided(x).dense, joint(x).dense, atol=1e-3)


def test_divided_attention_mixes_only_along_its_axes() -> None:
    _, divided = _divided_from_joint()
    x = torch.rand(1, 3, 8, 32, 32)
    y = x.clone()
    y[:, :, 0:2, 8:16, 16:24] += 0.5  # perturb the tubelet at slot 0, row 1, column 2
    with torch.no_grad():
        for block in divided.blocks:  # spatial branch off: tokens mix only across time at one location
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
        changed = (divided(x).dense - divided(y).dense).abs().amax(dim=1) > 1e-6  # (1, T', H', W')
    expected = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    expected[:, :, 1, 2] = True  # every slot at that location, nothing else
    assert torch.equal(changed, expected)


def test_forward_tokens_matches_forward() -> None:
    torch.manual_seed(0)
    enc = vit_micro().eval()
    x = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        dense = rearrange(enc(x).dense, "B D t h w -> B (t h w) D")
        torch.testing.assert_close(enc.forward_tokens(x), dense, rtol=0, atol=0)
        all_in_order = torch.arange(64).expand(2, 64)
        torch.testing.assert_close(enc.forward_tokens(x, all_in_order), dense, rtol=0, atol=0)
        # joint attention is permutation-equivariant once positions are added: any order gives the same tokens
        perm = torch.stack([torch.randperm(64), torch.randperm(64)])
        torch.testing.assert_close(enc.forward_tokens(x, perm), torch.gather(dense, 1, perm[..., None].expand(-1, -1, 64)))
        # a subset: visible tokens no longer see the others, so they change
        sub = enc.forward_tokens(x, all_in_order[:, :10])
        assert sub.shape == (2, 10, 64)
        assert not torch.allclose(sub, dense[:, :10], atol=1e-3)


def test_forward_tokens_errors() -> None:
    x = torch.rand(2, 3, 4, 32, 32)
    keep = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"attention='divided'\)\.forward_tokens: token masking \(keep\) needs"):
        vit_micro_divided().forward_tokens(x, keep)
    assert vit_micro_divided().forward_tokens(x).shape == (2, 32, 64)  # no mask: fine
    with pytest.raises(ValueError, match="keep: expected int64"):
        vit_micro().forward_tokens(x, keep.int())
    with pytest.raises(ValueError, match=r"keep: expected shape \(B N\) with B=2"):
        vit_micro().forward_tokens(x, keep[:1])


def test_vit_base_parameter_count() -> None:
    D, depth, mlp = 768, 12, 3072
    embed = 3 * 2 * 16 * 16 * D + D  # Conv3d 3->768, kernel 2x16x16, with bias
    pos = 14 * 14 * D + 8 * D  # spatial 14x14 + temporal 8 tables for 16x224x224
    block = 2 * (2 * D) + (D * 3 * D + 3 * D) + (D * D + D) + (D * mlp + mlp) + (mlp * D + D)  # 2 norms, qkv, proj, mlp
    expected = embed + pos + depth * block + 2 * D
    assert expected == 86_393_088  # ~86.4M; VideoMAE's ViT-B encoder is ~87M with its fixed 1568x768 sin-cos table
    with torch.device("meta"):
        enc = vit_base(clip_size=(16, 224, 224))
    assert sum(p.numel() for p in enc.parameters()) == expected
    assert enc.grid_size(16, 224, 224) == (8, 14, 14)
    assert enc.spec.channels == (768,) * 4 and enc.out_indices == (2, 5, 8, 11)
    with torch.device("meta"):
        divided = vit_base(attention="divided")
    # TimeSformer's divided block adds one attention (qkv + proj) and one LayerNorm per block
    assert sum(p.numel() for p in divided.parameters()) == expected + depth * (4 * D * D + 4 * D + 2 * D)
