import hashlib
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet import create_model, list_models
from resnet.models import BasicBlock, BlurPool, Bottleneck, PadShortcut, WeightsError, count_params, load_pretrained

# torchvision's exact state_dict layouts (key, shape, order), a copy of the shared fixture kept here
# so that the contract is checked on a fresh clone too.
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "torchvision_resnet_state_dicts.json"


def _fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                  "wide_resnet50_2", "resnext50_32x4d"])
def test_state_dict_is_torchvisions_exactly(name):
    expected = _fixture()[name]
    with torch.device("meta"):
        model = create_model(name)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == expected["state_dict"]  # keys, shapes and order
    assert count_params(model) == expected["num_params"]


@pytest.mark.parametrize("depth,paper", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_cifar_nets_have_the_papers_sizes(depth, paper):
    model = create_model(f"resnet{depth}")
    assert abs(count_params(model) - paper) / paper < 0.03
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n+2 weighted layers: the convs and the classifier
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(2, 16)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


@pytest.mark.parametrize("name,size", [("resnet18", 224), ("resnet50", 224), ("resnet18_seed", 32),
                                       ("resnet20", 32), ("plain20", 32), ("resnext50_32x4d", 64),
                                       ("resnet9", 32), ("resnet9", 16), ("resnet9m", 32)])
@pytest.mark.parametrize("batch", [1, 4])
def test_output_shapes(name, size, batch):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(batch, 3, size, size)).shape == (batch, 7)


@pytest.mark.parametrize("block,planes", [(BasicBlock, 8), (Bottleneck, 2)])
def test_zero_init_residual_block_is_relu_of_input(block, planes):
    torch.manual_seed(0)
    model = create_model("resnet50" if block is Bottleneck else "resnet18", zero_init_residual=True)
    blk = model.layer1[1]  # an identity-shortcut block
    assert isinstance(blk, block) and blk.downsample is None
    x = torch.randn(2, blk.conv1.in_channels, 8, 8)
    for mode in (True, False):
        blk.train(mode)
        assert torch.equal(blk(x), torch.relu(x))


def test_zero_init_residual_is_off_by_default():
    model = create_model("resnet18")
    assert model.layer1[0].bn2.weight.abs().sum() > 0


@pytest.mark.parametrize("name", ["plain20", "plain_resnet18", "plain_resnet50"])
def test_plain_twins_have_no_shortcut(name):
    plain, twin = create_model(name), create_model(name.replace("plain_", "").replace("plain", "resnet"))
    blocks = [m for m in plain.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(not b.residual and b.downsample is None for b in blocks)
    assert not any(isinstance(m, PadShortcut) for m in plain.modules())
    # same layers otherwise: only the projection shortcuts' parameters are missing
    assert all(k in twin.state_dict() for k in plain.state_dict())
    assert all("downsample" in k for k in set(twin.state_dict()) - set(plain.state_dict()))
    # functionally: with the residual branch silenced, a plain block outputs 0, not relu(x)
    blk = blocks[-1]
    bn_last = blk.bn3 if isinstance(blk, Bottleneck) else blk.bn2
    nn.init.zeros_(bn_last.weight)
    x = torch.rand(1, blk.conv1.in_channels, 4, 4)
    assert torch.count_nonzero(blk.eval()(x)) == 0


def test_resnet18_seed_is_the_tutorials_network():
    """The tutorial's Model(ResidualBlock): 3x3/1 conv + BN + ReLU stem with no pooling, four stages
    of two blocks (64-128-256-512, stride 2 from the second), 1x1 projection where shapes change,
    average pooling, one linear layer."""
    m = create_model("resnet18_seed", num_classes=2)
    assert (m.conv1.kernel_size, m.conv1.stride, m.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert (m.conv1.in_channels, m.conv1.out_channels) == (3, 64) and m.conv1.bias is None
    assert isinstance(m.maxpool, nn.Identity)
    inch = 64
    for i, width in enumerate((64, 128, 256, 512)):
        stage = getattr(m, f"layer{i + 1}")
        assert len(stage) == 2
        for j, blk in enumerate(stage):
            stride = 2 if (i > 0 and j == 0) else 1
            assert isinstance(blk, BasicBlock)
            assert blk.conv1.stride == (stride, stride) and blk.conv1.out_channels == width
            assert blk.conv2.stride == (1, 1) and blk.conv2.kernel_size == (3, 3)
            needs_projection = stride != 1 or inch != width
            assert (blk.downsample is not None) == needs_projection
            if needs_projection:
                conv, bn = blk.downsample
                assert conv.kernel_size == (1, 1) and conv.stride == (stride, stride) and isinstance(bn, nn.BatchNorm2d)
            inch = width
    assert (m.fc.in_features, m.fc.out_features) == (512, 2)
    # the tutorial's parameter count: torchvision's resnet18 with a 3x3 stem and a 2-class head
    assert count_params(m) == 11_689_512 - 64 * 3 * 49 + 64 * 3 * 9 - 998 * 513
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_whitened_stem_decorrelates_its_patches_in_opposite_pairs():
    """Each of the first 2k filters' responses to the images' patches has unit variance and no
    correlation with the others', strongest direction first; the rest keep their random values."""
    from resnet.models import whiten_conv

    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.randn(200, 3, 12, 12, generator=g), 3, 1, 1) * 3
    images = images + torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1) * torch.randn(200, 1, 12, 12, generator=g)
    conv = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False)
    rest = conv.weight[54:].detach().clone()
    whiten_conv(conv, images, eps=1e-9, floor=0.0, chunk_bytes=2**20)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, conv.weight[:27])  # the patches the statistics saw
        responses = out.transpose(0, 1).reshape(27, -1)
        covariance = responses @ responses.T / responses.shape[1]
    assert torch.allclose(covariance, torch.eye(27), atol=1e-3)
    assert torch.equal(conv.weight[27:54], -conv.weight[:27]) and torch.equal(conv.weight[54:], rest)
    # Strongest first: before whitening, the first filter's direction carries the most variance.
    directions = conv.weight[:27].reshape(27, -1)
    directions = directions / directions.norm(dim=1, keepdim=True)
    patches = torch.nn.functional.unfold(images, 3).transpose(1, 2).reshape(-1, 27)
    variance = (patches @ directions.T).pow(2).mean(0)
    assert torch.all(variance[:-1] >= variance[1:] - 1e-4)


def test_resnet9_is_pages_network():
    """Page's ResNet-9: 64-128-256-512 channels, resolution halved by a max-pool after each stage's
    first convolution (32 -> 16 -> 8 -> 4), residual blocks after the first and the last stage, a
    global max-pool and logits scaled by 1/8; its residual blocks are the family's BasicBlock."""
    from resnet.models import ResNet9, count_flops

    m = create_model("resnet9", num_classes=10).eval()
    assert isinstance(m, ResNet9) and m.num_stages == 3
    assert [m.conv1.out_channels, m.layer1[0].conv.out_channels, m.layer2[0].conv.out_channels,
            m.layer3[0].conv.out_channels] == [64, 128, 256, 512]
    assert isinstance(m.layer1[1], BasicBlock) and isinstance(m.layer3[1], BasicBlock) and len(m.layer2) == 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert m.forward_features(x).shape == (2, 512, 4, 4)
        features = m.forward_features(x).amax((2, 3))
        assert torch.allclose(m(x), m.fc(features) / 8, atol=1e-6)
    assert count_params(m) == 6_573_130
    # 3x3 convolutions at 32, 32, 16, 16, 16, 8, 4 and 4 px, plus the classifier: ~0.38 G multiply-adds
    assert count_flops("resnet9")[1] == pytest.approx(0.7585, rel=1e-3)
    half = create_model("resnet9", width=0.5)
    assert half.conv1.out_channels == 32 and half.fc.in_features == 256


def test_resnet9m_is_resnet9_with_airbench94s_middle_heavy_widths(tmp_path):
    """resnet9m: ResNet-9 whose second stage is as wide as its third (32, 64, 256, 256 at half
    width, airbench94's 1.97M parameters within 2 %), under ResNet-9's state_dict names; its files
    record the options a later default change would otherwise alter, and load as trained."""
    from resnet.checkpoint import load_checkpoint, save_checkpoint
    from resnet.models import ResNet9

    half = create_model("resnet9m", width=0.5).eval()
    assert isinstance(half, ResNet9)
    assert [half.conv1.out_channels, half.layer1[0].conv.out_channels, half.layer2[0].conv.out_channels,
            half.layer3[0].conv.out_channels] == [32, 64, 256, 256]
    assert count_params(half) == 2_015_018
    assert list(half.state_dict()) == list(create_model("resnet9", width=0.5).state_dict())
    card = {"arch": "resnet9m", "classes": ["a", "b"], "eval_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    model = create_model("resnet9m", num_classes=2, width=0.25).eval()
    save_checkpoint(tmp_path / "m.pt", {**card, "model": model.state_dict(), "model_options": {"width": 0.25}})
    assert torch.load(tmp_path / "m.pt", weights_only=True)["model_options"] == \
        {"width": 0.25, "pool_first": True, "act": "gelu"}
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_resnet9_older_checkpoints_load_as_they_were_trained(tmp_path):
    """ResNet-9 now pools before BN and then applies GELU. A checkpoint written before records
    neither `pool_first` nor `act`, one written between the two changes no `act`: each must load
    as it was trained (pooling last and ReLU; pooling first and ReLU), or the same weights would
    give other answers (BN statistics of the unpooled map, some scales negative; GELU lets
    negative values through); a new checkpoint records both, so it keeps loading as trained."""
    from resnet.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    oldest = create_model("resnet9", num_classes=3, width=0.25, pool_first=False, act="relu").eval()
    for m in oldest.modules():  # statistics a trained model would have, scales of either sign
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    older = create_model("resnet9", num_classes=3, width=0.25, act="relu").eval()
    new = create_model("resnet9", num_classes=3, width=0.25).eval()
    older.load_state_dict(oldest.state_dict()), new.load_state_dict(oldest.state_dict())
    assert [n for n, _ in new.layer1[0].named_children()] == ["conv", "pool", "bn", "relu"]  # as they run
    assert isinstance(new.layer3[1].relu, nn.GELU) and isinstance(older.layer3[1].relu, nn.ReLU)
    x = torch.randn(4, 3, 32, 32)
    card = {"arch": "resnet9", "classes": ["a", "b", "c"], "eval_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    weights = oldest.state_dict()
    torch.save({**card, "model": weights, "model_options": {"width": 0.25}}, tmp_path / "oldest.pt")
    torch.save({**card, "model": weights, "model_options": {"width": 0.25, "pool_first": True}}, tmp_path / "older.pt")
    save_checkpoint(tmp_path / "new.pt", {**card, "model": weights, "model_options": {"width": 0.25}})
    recorded = torch.load(tmp_path / "new.pt", weights_only=True)["model_options"]
    assert recorded == {"width": 0.25, "pool_first": True, "act": "gelu"}
    with torch.no_grad():
        outputs = [m(x) for m in (oldest, older, new)]
        for a, b in ((0, 1), (1, 2)):  # three different networks
            assert (outputs[a] - outputs[b]).abs().max() > 1e-2
        for path, model in (("oldest.pt", oldest), ("older.pt", older), ("new.pt", new)):
            loaded, meta = load_checkpoint(tmp_path / path)
            assert meta["model_options"]["pool_first"] is model.layer1[0].pool_first
            assert type(loaded.layer1[1].relu) is type(model.layer1[1].relu)
            assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_registry_lists_every_family():
    names = set(list_models())
    for n in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
              "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d", "resnet20", "resnet32",
              "resnet44", "resnet56", "resnet110", "resnet18_seed", "plain_resnet18", "plain20", "plain110",
              "resnet9", "resnet9m", "resnet18d", "resnet50d", "resnetblur18", "resnetblur50", "resnetblur50d"]:
        assert n in names
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet19")


@pytest.mark.parametrize("name,params", [("resnet18d", 11_708_744), ("resnet50d", 25_576_264)])
def test_resnet_d_has_timms_layout_and_size(name, params):
    """ResNet-D as timm builds it (its `resnet18d` / `resnet50d`: 11.71M / 25.58M parameters): the
    deep stem's convolutions at conv1.0 / .3 / .6 with BatchNorms at .1 / .4, the downsampling
    shortcut's convolution and BatchNorm at downsample.1 / .2 behind its pool, so timm's weights load
    by name."""
    model = create_model(name)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1.0.weight"] == (32, 3, 3, 3) and shapes["conv1.3.weight"] == (32, 32, 3, 3)
    assert shapes["conv1.6.weight"] == (64, 32, 3, 3) and shapes["conv1.1.weight"] == shapes["conv1.4.weight"] == (32,)
    assert shapes["bn1.weight"] == (64,)
    out = 128 if name == "resnet18d" else 512
    assert shapes["layer2.0.downsample.1.weight"][:2] == (out, out // 2) and shapes["layer2.0.downsample.2.weight"] == (out,)
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet_d_shortcut_sees_every_pixel_where_option_b_sees_a_quarter():
    """The reason for ResNet-D's shortcut: a stride-2 1x1 convolution ignores three of every four
    input pixels; averaging 2x2 first lets each one count."""
    def shortcut_gradient(name: str) -> torch.Tensor:
        down = create_model(name, width=0.25).layer2[0].downsample.eval()
        x = torch.randn(1, 16, 8, 8, requires_grad=True)
        down(x).sum().backward()
        return x.grad.abs().sum(1)[0]

    assert (shortcut_gradient("resnet18d") > 0).all()
    assert (shortcut_gradient("resnet18") > 0).float().mean() == 0.25


def test_resnet_d_folds_every_batchnorm_and_keeps_its_logits():
    """Folding reaches the BatchNorm after the deep stem's last convolution (bn1) as well as the
    stem's own and the shortcut's: none is left, and the logits stay those of the unfolded net."""
    from resnet.inference.runtime import fold_batchnorm

    torch.manual_seed(0)
    model = create_model("resnet18d", num_classes=10, width=0.5)
    model.train()
    model(torch.randn(8, 3, 64, 64))  # running statistics that are not the identity
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), expected, rtol=1e-4, atol=1e-5)


def test_blur_pool_is_a_mirrored_binomial_filter_then_every_second_pixel():
    """Zhang's / timm's filter, written out: each output pixel is the [1 2 1] x [1 2 1] / 16 weighted
    sum of the 3x3 neighbourhood of every second input pixel, edges mirrored (not zero: a border
    would darken), each channel on its own."""
    import numpy as np

    x = torch.randn(2, 3, 7, 6)
    taps = np.array([1.0, 2.0, 1.0]) / 4
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    expected = sum(taps[i] * taps[j] * padded[:, :, i:i + 7, j:j + 6]
                   for i in range(3) for j in range(3))[:, :, ::2, ::2]
    got = BlurPool(3, 2)(x)
    assert got.shape == (2, 3, 4, 3)
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    one_pixel = torch.randn(2, 3, 1, 1)  # nothing to mirror: the pixel is kept as it is
    assert torch.allclose(BlurPool(3, 2)(one_pixel), one_pixel)


@pytest.mark.parametrize("name,base", [("resnetblur18", "resnet18"), ("resnetblur50", "resnet50"),
                                       ("resnetblur18d", "resnet18d")])
def test_resnetblur_is_its_base_network_with_every_downsampling_blurred(name, base):
    """timm's resnetblur18...: the same weights by name as the network without blur (torchvision's
    file loads strictly), a BlurPool behind the stem's max-pool and in the first block of each
    strided stage, whose convolutions then all run at stride 1 (the shortcut keeps its stride);
    the same output shapes at an odd size, other logits, and BatchNorm folding still exact."""
    from resnet.inference.runtime import fold_batchnorm

    torch.manual_seed(0)
    plain = create_model(base, num_classes=10, width=0.25)
    model = create_model(name, num_classes=10, width=0.25)
    model.load_state_dict(plain.state_dict(), strict=True)
    blurs = [n for n, m in model.named_modules() if isinstance(m, BlurPool)]
    assert blurs == ["maxpool.1"] + [f"layer{i}.0.aa" for i in (2, 3, 4)]
    assert model.maxpool[0].stride == 1
    for i in (2, 3, 4):
        block = getattr(model, f"layer{i}")[0]
        assert all(c.stride == (1, 1) for c in block.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3))
        assert block.downsample[0].stride in ((2, 2), 2)  # strided conv, or ResNet-D's pool
    model.eval(), plain.eval()
    x = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        expected = model(x)
        assert model.forward_features(x).shape == plain.forward_features(x).shape
        assert not torch.allclose(expected, plain(x), atol=1e-3)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), expected, rtol=1e-4, atol=1e-5)


# ----- weights ------------------------------------------------------------------------------


def _torchvision_file(tmp_path: Path, num_classes: int = 1000, name: str = "resnet18") -> Path:
    """A file as torchvision writes it: a plain OrderedDict state_dict."""
    torch.manual_seed(1)
    state = create_model(name, num_classes=num_classes).state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return path


def test_torchvision_layout_round_trips_strictly_with_identical_logits(tmp_path):
    path = _torchvision_file(tmp_path)
    source = create_model("resnet18")
    source.load_state_dict(torch.load(path, weights_only=True), strict=True)
    loaded = create_model("resnet18", pretrained=str(path))
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_safetensors_and_wrapper_prefixes(tmp_path):
    from safetensors.torch import save_file

    state = create_model("resnet20").state_dict()
    prefixed = {f"module._orig_mod.{k}": v.clone() for k, v in state.items()}
    save_file(prefixed, str(tmp_path / "w.safetensors"))
    model = create_model("resnet20", pretrained=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_pretrained_files_say_the_size_their_model_was_evaluated_at(tmp_path):
    """A checkpoint and its safetensors export carry the model card's size, which fine-tuning
    takes; torchvision's file carries none."""
    from resnet.checkpoint import model_card, save_checkpoint
    from resnet.inference.exports import export_safetensors
    from resnet.models import read_pretrained

    model = create_model("resnet20", num_classes=2)
    card = model_card("resnet20", {}, ["a", "b"], 40, 1.0, False)
    save_checkpoint(tmp_path / "run.pt", {**card, "model": model.state_dict()})
    export_safetensors(tmp_path / "run.pt", tmp_path / "run.safetensors")
    for name in ("run.pt", "run.safetensors"):
        weights, size = read_pretrained(str(tmp_path / name))
        assert size == 40 and all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), name
    assert read_pretrained(str(_torchvision_file(tmp_path)))[1] is None


def test_head_of_another_size_is_replaced_and_the_user_told(tmp_path, caplog):
    path = _torchvision_file(tmp_path, 1000)
    source = torch.load(path, weights_only=True)
    with caplog.at_level(logging.WARNING):
        model = create_model("resnet18", num_classes=2, pretrained=str(path))
    assert "replacing the classifier" in caplog.text and "1000" in caplog.text
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert state["fc.weight"].shape == (2, 512)


def test_wrong_shapes_fail_naming_the_keys(tmp_path):
    path = _torchvision_file(tmp_path, 1000, "resnet34")  # resnet34's layers do not fit resnet18
    with pytest.raises(WeightsError, match="unexpected keys: .*layer1.2"):
        create_model("resnet18", pretrained=str(path))
    state = create_model("resnet18").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"layer1.0.conv1.weight: file \(64, 64, 1, 1\)"):
        create_model("resnet18", pretrained=str(tmp_path / "bad.pth"))


def test_url_goes_through_hub_cache_and_checks_the_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path = _torchvision_file(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = path.with_name(f"resnet18-{digest[:8]}.pth")
    path.rename(good)
    model = create_model("resnet18", pretrained=good.as_uri())
    assert (tmp_path / "hub" / "hub" / "checkpoints" / good.name).is_file()  # torch.hub's cache
    assert torch.equal(model.state_dict()["conv1.weight"], torch.load(good, weights_only=True)["conv1.weight"])
    bad = good.with_name("resnet18-00000000.pth")
    bad.write_bytes(good.read_bytes())
    with pytest.raises(WeightsError, match="hash"):
        create_model("resnet18", pretrained=bad.as_uri())


def test_imagenet_means_torchvisions_official_file(tmp_path, monkeypatch):
    from resnet import models

    assert models.model_spec("resnet50").imagenet_url.endswith("/resnet50-0676ba61.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path = _torchvision_file(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    local = path.rename(path.with_name(f"resnet18-{digest}.pth"))
    spec = models.model_spec("resnet18")
    monkeypatch.setitem(models._REGISTRY, "resnet18", type(spec)(**{**spec.__dict__, "imagenet_url": local.as_uri()}))
    model = create_model("resnet18", num_classes=2, pretrained="imagenet")
    assert torch.equal(model.conv1.weight, torch.load(local, weights_only=True)["conv1.weight"])
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        load_pretrained(create_model("resnet20"), "imagenet", "resnet20")


def test_flops_at_native_size():
    from resnet.models import count_flops

    params, gflops = count_flops("resnet18")
    assert params == 11_689_512
    assert math.isclose(gflops, 2 * 1.814, rel_tol=0.01)  # torchvision's table: 1.81 G multiply-adds
