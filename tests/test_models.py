"""Tests of rirn.models: layout against MONAI SegResNet, sizes against the paper's Table 5,
the non-local block against a naive implementation, builders and the stats command."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import rirn.config  # noqa: F401  (registers the device_default resolver)
from rirn.errors import ConfigError
from rirn.models import (
    Discriminator,
    NonLocalBlock,
    UNet3D,
    UNetOutput,
    build_discriminator,
    build_unet,
    embedded_gaussian_attention,
)
from rirn.models.stats import count_macs, count_parameters, stats_table
from rirn.models.unet import ResBlock

REPO = Path(__file__).resolve().parents[1]
PAPER_CROP = (160, 192, 128)


def nonlocal_params(c: int, e: int) -> int:
    """theta, phi, g (weights + biases), output conv without bias, affine norm."""
    return 3 * (c * e + e) + e * c + 2 * c


def unet_params(in_ch, out_ch, widths, blocks_down, blocks_up, nonlocal_at=None, embed=64) -> int:
    """Parameter count of the layout written out by hand (every norm is affine: 2C)."""
    block = lambda c: 2 * (27 * c * c) + 2 * (2 * c)  # noqa: E731
    n = 27 * in_ch * widths[0]
    for s, c in enumerate(widths):
        n += (27 * widths[s - 1] * c if s else 0) + blocks_down[s] * block(c)
    for s in range(len(widths) - 1):
        n += widths[s + 1] * widths[s] + blocks_up[-1 - s] * block(widths[s])  # coarse to fine
    n += 2 * widths[0] + widths[0] * out_ch + out_ch
    if nonlocal_at is not None:
        n += nonlocal_params(widths[nonlocal_at], embed)
    return n


def unet_conv_macs(in_ch, out_ch, widths, blocks_down, blocks_up, size, nonlocal_at=None, embed=64):
    """Conv MACs of the layout from shapes alone: voxels at scale s x C_out x C_in x k^3."""
    vox = [math.prod(size) // 8**s for s in range(len(widths))]
    macs = vox[0] * widths[0] * in_ch * 27
    for s, c in enumerate(widths):
        down = vox[s] * c * widths[s - 1] * 27 if s else 0
        macs += down + blocks_down[s] * 2 * vox[s] * c * c * 27
    for s in range(len(widths) - 1):
        # the 1x1x1 reduction runs at the coarse scale, before upsampling
        reduce = vox[s + 1] * widths[s] * widths[s + 1]
        macs += reduce + blocks_up[-1 - s] * 2 * vox[s] * widths[s] ** 2 * 27
    macs += vox[0] * out_ch * widths[0]
    if nonlocal_at is not None:
        macs += vox[nonlocal_at] * 4 * widths[nonlocal_at] * embed
    return macs


DEFAULT = dict(widths=(16, 32, 64, 128), blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))


# ---------------------------------------------------------------- shapes and output order


def test_output_shapes_and_order():
    torch.manual_seed(0)
    model = UNet3D(2).eval()
    size = (32, 16, 24)
    x = torch.randn(2, 2, *size)
    out = model(x)
    assert isinstance(out, UNetOutput)
    assert out._fields == ("logits", "features", "query", "key", "deep_logits")
    assert out.deep_logits == ()
    assert out.logits.shape == (2, 3, *size)
    assert out.features.shape == (2, 16, *size)
    n = math.prod(size) // 8**3
    assert out.query.shape == (2, 64, n) and out.key.shape == (2, 64, n)
    # features are the input of the 1x1x1 head
    torch.testing.assert_close(model.head(out.features), out.logits)
    # query/key are theta/phi of the bottleneck, flattened in C order
    feats = {}
    model.nonlocal_block.register_forward_hook(lambda m, i, o: feats.update(x=i[0]))
    model(x)
    torch.testing.assert_close(out.query, model.nonlocal_block.theta(feats["x"]).flatten(2))
    torch.testing.assert_close(out.key, model.nonlocal_block.phi(feats["x"]).flatten(2))


def test_nonlocal_disabled_and_other_scale():
    x = torch.randn(1, 1, 16, 16, 16)
    out = UNet3D(1, nonlocal_scale=None).eval()(x)
    assert out.query is None and out.key is None
    out = UNet3D(1, nonlocal_scale=2, nonlocal_channels=8).eval()(x)
    assert out.query.shape == (1, 8, 8**3)


def test_bad_spatial_size_raises():
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet3D(1)(torch.zeros(1, 1, 16, 16, 12))


# ---------------------------------------------------------------- layout: MONAI as oracle


def _monai_to_ours(name: str) -> str:
    name = re.sub(r"\.conv\.(weight|bias)$", r".\1", name)
    for pattern, repl in (
        (r"^convInit\.", "init_conv."),
        (r"^down_layers\.", "encoder."),
        (r"^up_samples\.(\d+)\.0\.", r"decoder.\1.reduce."),
        (r"^up_layers\.(\d+)\.", r"decoder.\1.blocks."),
        (r"^conv_final\.0\.", "head_norm."),
        (r"^conv_final\.2\.", "head."),
    ):
        name = re.sub(pattern, repl, name)
    return name


@pytest.mark.parametrize("in_channels, blocks_up", [(1, (1, 1, 1)), (4, (2, 1, 0))])
def test_plain_unet_equals_monai_segresnet(in_channels, blocks_up):
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    ref = monai_nets.SegResNet(
        spatial_dims=3,
        init_filters=16,
        in_channels=in_channels,
        out_channels=3,
        blocks_down=(1, 2, 2, 4),
        blocks_up=blocks_up,
    ).eval()
    ours = UNet3D(in_channels, blocks_up=blocks_up, nonlocal_scale=None).eval()
    assert count_parameters(ours) == count_parameters(ref)
    state = {_monai_to_ours(k): v for k, v in ref.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, in_channels, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- sizes: Table 5


def test_paper_parameter_count():
    plain = unet_params(1, 3, **DEFAULT)
    assert plain == 4_700_931  # reference.md §2 (= MONAI SegResNet)
    model = UNet3D(1)
    assert count_parameters(model) == plain + nonlocal_params(128, 64) == 4_734_147
    assert 4.72e6 <= count_parameters(model) <= 4.75e6
    assert count_parameters(model.nonlocal_block) == 33_216


def test_paper_macs():
    macs = count_macs(UNet3D(1), (1, 1, *PAPER_CROP))
    assert macs["conv"] == unet_conv_macs(1, 3, **DEFAULT, size=PAPER_CROP, nonlocal_at=3)
    assert abs(macs["conv"] / 272.75e9 - 1) < 0.005
    plain = count_macs(UNet3D(1, nonlocal_scale=None), (1, 1, *PAPER_CROP))["conv"]
    assert round(plain / 1e9, 2) == 272.42  # reference.md §2
    assert plain == unet_conv_macs(1, 3, **DEFAULT, size=PAPER_CROP)
    n = math.prod(PAPER_CROP) // 8**3
    assert macs["attention"] == 2 * n * n * 64


def test_meta_count_matches_real_forward_hooks():
    """The meta-device count equals a count on a real forward; the caller's model is untouched."""
    model = UNet3D(3, nonlocal_scale=4).train()
    real = 0

    def hook(m, i, o):
        nonlocal real
        real += o.numel() * m.in_channels * math.prod(m.kernel_size)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    model(torch.randn(1, 3, 16, 24, 32))
    for h in handles:
        h.remove()
    assert count_macs(model, (1, 3, 16, 24, 32))["conv"] == real
    assert model.training and next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------- non-local block


def _naive_nonlocal(block: NonLocalBlock, x: torch.Tensor, scaled: bool = False):
    def conv1(conv, t):  # 1x1x1 conv as a matrix product over flattened voxels
        w = conv.weight.flatten(1)
        y = torch.einsum("oc,bcn->bon", w, t)
        return y if conv.bias is None else y + conv.bias[None, :, None]

    flat = x.flatten(2)
    theta, phi, g = conv1(block.theta, flat), conv1(block.phi, flat), conv1(block.g, flat)
    if scaled:
        theta = theta / math.sqrt(theta.shape[1])
    attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N), rows sum to 1
    y = g @ attn.transpose(1, 2)  # y_i = sum_j A_ij g_j
    z = block.norm(conv1(block.out, y).reshape(x.shape))
    return x + z, theta, phi


@pytest.mark.parametrize("scaled", [False, True])
def test_nonlocal_matches_naive(scaled):
    """Unscaled (paper) and ``scaled`` (theta / sqrt(C'), the opt-in ablation) blocks against
    the attention written out by hand; the returned query carries the scale, so CAR's relation
    softmax(q^T k) is the block's attention in both cases."""
    torch.manual_seed(0)
    block = NonLocalBlock(16, 8, lambda c: nn.GroupNorm(4, c), scaled=scaled).double()
    nn.init.normal_(block.norm.weight)  # leave the identity start, so the attention path counts
    nn.init.normal_(block.norm.bias)
    x = torch.randn(2, 16, 4, 3, 5, dtype=torch.float64)
    z, q, k = block(x)
    z_ref, q_ref, k_ref = _naive_nonlocal(block, x, scaled)
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(k, k_ref)
    torch.testing.assert_close(z, z_ref)
    assert not torch.allclose(z, x)


def test_attention_has_no_scaling():
    q, k, v = (torch.randn(1, 4, 6, dtype=torch.float64) for _ in range(3))
    logits = torch.einsum("bci,bcj->bij", q, k)  # no 1/sqrt(4)
    expected = torch.einsum("bij,bcj->bci", torch.softmax(logits, -1), v)
    torch.testing.assert_close(embedded_gaussian_attention(q, k, v), expected)


@pytest.mark.parametrize("norm", ["group", "instance", "batch"])
def test_nonlocal_starts_as_identity(norm):
    torch.manual_seed(0)
    model = UNet3D(
        1, norm=norm, widths=(8, 16), blocks_down=(1, 1), blocks_up=(1,), nonlocal_scale=2
    )
    x = torch.randn(2, 16, 4, 4, 4)
    z, _, _ = model.nonlocal_block.train()(x)
    assert torch.equal(z, x)


# ---------------------------------------------------------------- dropout, configurability


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = UNet3D(1, widths=(8, 16), blocks_down=(1, 1), blocks_up=(1,), nonlocal_scale=2)
    assert isinstance(model.init_dropout, nn.Dropout3d) and model.init_dropout.p == 0.2
    assert isinstance(model.bottleneck_dropout, nn.Identity)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x).logits, model(x).logits)
        model.eval()
        assert torch.equal(model(x).logits, model(x).logits)
    moved = UNet3D(1, dropout_position="bottleneck")
    assert isinstance(moved.bottleneck_dropout, nn.Dropout3d)
    assert isinstance(moved.init_dropout, nn.Identity)
    assert not any(
        isinstance(m, nn.Dropout3d) for m in UNet3D(1, dropout_position="none").modules()
    )


@pytest.mark.parametrize(
    "kwargs, size",
    [
        (
            dict(
                widths=(8, 16),
                blocks_down=(1, 1),
                blocks_up=(2,),
                norm="instance",
                nonlocal_scale=2,
            ),
            8,
        ),
        (dict(widths=(8,), blocks_down=(2,), blocks_up=(), norm="batch", nonlocal_scale=1), 6),
        (
            dict(widths=(8, 16, 32, 64, 128), blocks_down=(1, 1, 1, 1, 1), blocks_up=(1, 1, 1, 1)),
            16,
        ),
        (
            dict(
                widths=(12, 24, 48),
                blocks_down=(0, 1, 2),
                blocks_up=(1, 0),
                norm_groups=4,
                nonlocal_scale=None,
            ),
            8,
        ),
    ],
)
def test_configurable_models(kwargs, size):
    torch.manual_seed(0)
    model = UNet3D(2, out_channels=4, **kwargs)
    depth = len(kwargs["widths"])
    scale = kwargs.get("nonlocal_scale", 8)
    stage = None if scale is None else int(math.log2(scale))
    expected = unet_params(
        2, 4, kwargs["widths"], kwargs["blocks_down"], kwargs["blocks_up"], stage
    )
    assert count_parameters(model) == expected
    shape = (2, 2, size, size, size)
    assert count_macs(model, shape)["conv"] == 2 * unet_conv_macs(
        2, 4, kwargs["widths"], kwargs["blocks_down"], kwargs["blocks_up"], (size,) * 3, stage
    )
    out = model(torch.randn(shape))
    assert out.logits.shape == (2, 4, size, size, size)
    assert out.features.shape == (2, kwargs["widths"][0], size, size, size)
    out.logits.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.size_divisor == 2 ** (depth - 1)


# ---------------------------------------------------------------- builders


def test_build_from_yaml():
    cfg = OmegaConf.load(REPO / "configs" / "model" / "unet3d.yaml")
    student = build_unet(cfg, in_channels=1)
    assert count_parameters(student) == 4_734_147
    assert count_parameters(build_unet(cfg, in_channels=4)) == 4_734_147 + 3 * 27 * 16
    disc = build_discriminator(cfg)
    assert count_parameters(disc) == (3 * 64 * 4**3 + 64) + (64 * 4**3 + 1)
    assert student.nonlocal_block.query_scale == 1.0  # the paper's unscaled attention
    cfg.nonlocal_scaled = True
    scaled = build_unet(cfg, in_channels=1)
    assert scaled.nonlocal_block.query_scale == pytest.approx(1 / 8)  # 1/sqrt(C' = 64)
    assert count_parameters(scaled) == 4_734_147


@pytest.mark.parametrize(
    "override, key",
    [
        ({"norm": "layer"}, "model.norm"),
        ({"nonlocal_scale": 3}, "model.nonlocal_scale"),
        ({"widths": 16}, "model.widths"),
        ({"blocks_down": [1, 2]}, "model.blocks_down"),
        ({"norm_groups": 5}, "model.norm_groups"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"dropout_position": "end"}, "model.dropout_position"),
        ({"nonlocal_scaled": "yes"}, "model.nonlocal_scaled"),
        ({"head_prior": 1.0}, "model.head_prior"),
        ({"head_prior": 0}, "model.head_prior"),
        ({"zero_init_residual": "yes"}, "model.zero_init_residual"),
        ({"widht": [8]}, "model.widht"),
        ({"discriminator": {"channels": 0}}, "model.discriminator.channels"),
        ({"discriminator": {"chanels": 8}}, "model.discriminator.chanels"),
    ],
)
def test_builder_config_errors(override, key):
    cfg = {
        # resolved: CPU/CUDA defaults such as model.dropout are ${device_default:...}
        **OmegaConf.to_container(
            OmegaConf.load(REPO / "configs" / "model" / "unet3d.yaml"), resolve=True
        ),
        **override,
    }
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_unet(cfg, in_channels=1)
        build_discriminator(cfg)


@pytest.mark.parametrize("prior", [0.1, 0.5, 0.01])
def test_head_prior_sets_the_initial_probability_and_nothing_else(prior):
    torch.manual_seed(0)
    default = UNet3D(1, widths=(8, 16), blocks_down=(1, 1), blocks_up=(1,), nonlocal_scale=None)
    torch.manual_seed(0)
    primed = UNet3D(
        1,
        widths=(8, 16),
        blocks_down=(1, 1),
        blocks_up=(1,),
        nonlocal_scale=None,
        head_prior=prior,
    )
    # sigmoid(b) = p  <=>  b = log(p / (1 - p)), computed by hand
    expected = torch.full((3,), math.log(prior) - math.log1p(-prior))
    torch.testing.assert_close(primed.head.bias.detach(), expected)
    torch.testing.assert_close(torch.sigmoid(primed.head.bias.detach()), torch.full((3,), prior))
    for (name, a), b in zip(
        default.state_dict().items(), primed.state_dict().values(), strict=True
    ):
        if name != "head.bias":
            assert torch.equal(a, b), name


def test_zero_init_residual_starts_every_block_as_the_identity_and_changes_nothing_else():
    kw = dict(widths=(8, 16), blocks_down=(1, 2), blocks_up=(1,), nonlocal_scale=None)
    torch.manual_seed(0)
    default = UNet3D(1, **kw)
    torch.manual_seed(0)
    zeroed = UNet3D(1, **kw, zero_init_residual=True)
    blocks = [m for m in zeroed.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 1 + 2 + 1
    x = torch.randn(2, 16, 4, 4, 4)
    torch.testing.assert_close(blocks[1](x.clone()), x)  # encoder stage 1: x + 0
    for (name, a), b in zip(
        default.state_dict().items(), zeroed.state_dict().values(), strict=True
    ):
        if ".conv2." in name:
            assert not b.any(), name
        else:
            assert torch.equal(a, b), name
    # The zeroed convolutions still get a gradient (their input is non-zero), so they learn.
    zeroed(torch.randn(1, 1, 8, 8, 8)).logits.sum().backward()
    assert all(b.conv2.weight.grad.abs().sum() > 0 for b in blocks)


# ---------------------------------------------------------------- discriminator


def test_discriminator_shape_and_macs():
    disc = Discriminator(3, 8)
    x = torch.rand(2, 3, 16, 12, 9)
    assert disc(x).shape == (2, 1, 4, 3, 2)
    out1, out2 = 2 * 8 * 6 * 4, 2 * 4 * 3 * 2  # voxels after each stride-2 conv
    expected = out1 * 8 * 3 * 64 + out2 * 1 * 8 * 64
    assert count_macs(disc, (2, 3, 16, 12, 9)) == {"conv": expected, "attention": 0}


# ---------------------------------------------------------------- stats


def test_stats_table_rows():
    cfg = OmegaConf.load(REPO / "configs" / "model" / "unet3d.yaml")
    rows = stats_table(cfg, "T2+fl", [32, 32, 32])
    assert [r["model"] for r in rows] == ["teacher (all)", "student (flair+t2)", "discriminator"]
    assert [r["inputs"] for r in rows] == [4, 2, 3]
    assert rows[1]["params"] == 4_734_147 + 27 * 16
    assert rows[1]["conv_macs"] == unet_conv_macs(2, 3, **DEFAULT, size=(32,) * 3, nonlocal_at=3)
    with pytest.raises(ConfigError, match="crop"):
        stats_table(cfg, "t1", [32, 32, 30])


def test_stats_config_composes():
    """configs/stats.yaml composes with the model group and writes no run directory."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            "stats", overrides=["modality=t2", "crop=[16,16,16]"], return_hydra_config=True
        )
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None
    assert cfg.model.norm == "group" and list(cfg.crop) == [16, 16, 16]
    rows = stats_table(cfg.model, cfg.modality, cfg.crop)
    assert rows[1]["model"] == "student (t2)" and rows[1]["params"] == 4_734_147


@pytest.mark.slow
def test_stats_cli(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "rirn.models.stats", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )

    ok = run("modality=flair+t1ce", "crop=[32,32,32]")
    assert ok.returncode == 0, ok.stderr
    assert "student (flair+t1ce)" in ok.stdout and f"{4_734_147 + 27 * 16:,}" in ok.stdout
    bad = run("model.norm=layer")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: model.norm")
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log file


# ---------------------------------------------------------------- slow: compile, GPU


@pytest.mark.slow
def test_torch_compile_fullgraph():
    """No graph break: forward traces into one graph, outputs match eager, backward runs."""
    torch.manual_seed(0)
    model = UNet3D(
        1, widths=(8, 16, 32), blocks_down=(1, 1, 1), blocks_up=(1, 1), nonlocal_scale=4
    ).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    assert isinstance(out, UNetOutput)
    torch.testing.assert_close(out.logits, model(x).logits, rtol=1e-4, atol=1e-5)
    out.logits.sum().backward()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_attention_cuda_kernels_match_naive(dtype, tol):
    """The fused SDPA kernels compute the unscaled attention (paper bottleneck: N = 7680).

    The reference is the naive formula in float64 on the *same* (dtype-rounded) inputs, so only
    the kernel's own error is measured: without the 1/sqrt(C') scaling the softmax is peaked
    and amplifies any error in theta/phi (e.g. TF32 convs), which is not the kernel's doing.
    """
    torch.manual_seed(0)
    q, k, v = (0.3 * torch.randn(1, 64, 7680, device="cuda", dtype=dtype) for _ in range(3))
    y = embedded_gaussian_attention(q, k, v)
    assert y.dtype == dtype
    qd, kd, vd = (t.double() for t in (q, k, v))
    attn = torch.softmax(qd.transpose(1, 2) @ kd, dim=-1)
    torch.testing.assert_close(y.double(), vd @ attn.transpose(1, 2), rtol=tol, atol=tol)


@pytest.mark.slow
@needs_cuda
def test_paper_size_training_step_cuda():
    model = UNet3D(1).cuda().train()
    x = torch.randn(1, 1, *PAPER_CROP, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert out.logits.shape == (1, 3, *PAPER_CROP)
    assert out.features.shape == (1, 16, *PAPER_CROP)
    assert out.query.shape == out.key.shape == (1, 64, math.prod(PAPER_CROP) // 8**3)
    out.logits.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
