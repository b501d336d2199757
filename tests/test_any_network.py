"""Any PyTorch network (docs/networks.md, "Any PyTorch network"): a randomly initialised
torchvision ResNet-18 (torchvision's own where it imports, else the project's copy) and
a tiny ViT-style model written here, tapped by module name with forward hooks
(generator.hooked) and recorded by generator.record into the usual activation table."""

import re
import threading

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from analysis.activations import open_table
from generator import record as rec
from generator.hooked import HookedNet, list_layers
from generator.loading import build_network, get_spec, load_network, parse_preprocessing
from generator.networks import TORCHVISION_PREPROCESSING, Preprocessing, WeightsError
from generator.record import main, record, reduce_activation
from generator.torchvision_models import resnet18, resnet34, resnet50

# A ViT in miniature: a patch embedding convolution, a class token, two blocks of
# attention (nn.MultiheadAttention) and an MLP (mlp.fc1, mlp.fc2), layer norms, a head.
# 32x32 inputs in 8x8 patches: 16 patches + the class token = 17 tokens of 16 channels.
VIT_SOURCE = '''
import torch
from torch import nn

from generator.networks import Preprocessing


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, dim=16, depth=2, heads=2, patch=8, size=32, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + (size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


PREPROCESSING = Preprocessing(size=32, resize="square", crop=32, channels="RGB",
                              scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
SPEC = "size=32,resize=square,crop=32,scale=1/255,mean=0.5/0.5/0.5,std=0.25/0.25/0.25"


def build():
    torch.manual_seed(0)
    return TinyViT()


def build_with_preprocessing():
    model = build()
    model.preprocessing = PREPROCESSING
    return model
'''

FAST = dict(keep="all", batch_size=4, workers=0, progress=False)


def vit_namespace() -> dict:
    namespace = {"__name__": "tiny_vit"}
    exec(compile(VIT_SOURCE, "tiny_vit", "exec"), namespace)
    return namespace


@pytest.fixture
def vit_file(tmp_path):
    path = tmp_path / "tiny_vit.py"
    path.write_text(VIT_SOURCE)
    return path


@pytest.fixture
def images_csv(tmp_path):
    """Six PNG images of noise, of several sizes, labelled 0..5."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    lines = ["path,label"]
    for i, (w, h) in enumerate([(40, 30), (50, 50), (30, 60), (64, 48), (33, 33), (80, 40)]):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        lines.append(f"{path},{i}")
    csv = tmp_path / "images.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def inputs(csv, preprocessing) -> torch.Tensor:
    paths = [line.split(",")[0] for line in csv.read_text().splitlines()[1:]]
    return torch.stack([preprocessing(Image.open(p)) for p in paths])


def manual_taps(model: nn.Module, x: torch.Tensor, names) -> tuple[dict, torch.Tensor]:
    """The outputs of the named modules for ``x``, read with our own hooks."""
    got, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(module, args, output, name=name):
            got[name] = (output[0] if isinstance(output, tuple) else output).clone()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return got, out


def table_layers(path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {name: f["layers"][name][()] for name in f["layers"]}


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def listed(capsys) -> dict[str, tuple[str, str, str]]:
    """--list-layers output: name -> (type, shape, note)."""
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("#"):
            continue
        name, kind, shape, note = re.fullmatch(r"(\S+)\s+(\S+)\s+(\(.*?\)|-)\s*(.*)",
                                               line).groups()
        rows[name] = (kind, shape, note)
    return rows


# -- the architectures ------------------------------------------------------------------


def test_the_project_resnets_have_torchvisions_names_and_sizes():
    # parameter counts and state-dict sizes of torchvision's resnet18/34/50
    for build, params, entries in ((resnet18, 11_689_512, 122), (resnet34, 21_797_672, 218),
                                   (resnet50, 25_557_032, 320)):
        model = build()
        assert sum(p.numel() for p in model.parameters()) == params
        assert len(model.state_dict()) == entries
    state = resnet18().state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert "layer2.0.downsample.1.num_batches_tracked" in state
    assert "layer1.0.downsample.0.weight" not in state
    assert state["layer4.1.bn2.running_var"].shape == (512,)
    assert state["fc.weight"].shape == (1000, 512)
    state50 = resnet50().state_dict()
    assert state50["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert state50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state50["layer4.2.conv2.weight"].shape == (512, 512, 3, 3)
    assert state50["fc.weight"].shape == (1000, 2048)
    try:
        import torchvision
    except Exception:  # noqa: BLE001 - not installable beside this torch build
        return
    for name, build in (("resnet18", resnet18), ("resnet50", resnet50)):
        theirs = torchvision.models.get_model(name, weights=None).eval()
        ours = build().eval()
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: v.shape for k, v in theirs.state_dict().items()}
        ours.load_state_dict(theirs.state_dict(), strict=True)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x))


# -- --list-layers ----------------------------------------------------------------------


def test_list_layers_of_resnet18(capsys):
    assert main(["--network", "torchvision:resnet18", "--list-layers"]) == 0
    rows = listed(capsys)
    expected = {
        "conv1": ("Conv2d", "(64, 112, 112)"), "maxpool": ("MaxPool2d", "(64, 56, 56)"),
        "layer1": ("Sequential", "(64, 56, 56)"), "layer2": ("Sequential", "(128, 28, 28)"),
        "layer3": ("Sequential", "(256, 14, 14)"), "layer4": ("Sequential", "(512, 7, 7)"),
        "layer4.1": ("BasicBlock", "(512, 7, 7)"), "layer4.1.conv2": ("Conv2d", "(512, 7, 7)"),
        "layer2.0.downsample.0": ("Conv2d", "(128, 28, 28)"),
        "avgpool": ("AdaptiveAvgPool2d", "(512, 1, 1)"), "fc": ("Linear", "(1000,)"),
        "output": ("ResNet", "(1000,)"),
    }
    for name, (kind, shape) in expected.items():
        assert rows[name][:2] == (kind, shape), name
    model = resnet18()
    assert list(rows) == [n for n, _ in model.named_modules() if n] + ["output"]
    # a BasicBlock applies its one ReLU twice: no tap
    assert rows["layer1.0.relu"][2] == "(runs 2 times: not a tap)"
    assert rows["layer4"][2] == ""


def test_list_layers_of_a_vit_from_a_file(capsys, vit_file):
    assert main(["--network", f"{vit_file}:build_with_preprocessing", "--list-layers"]) == 0
    rows = listed(capsys)
    assert rows["patch_embed"][:2] == ("Conv2d", "(16, 4, 4)")
    assert rows["blocks.0.attn"][:2] == ("MultiheadAttention", "(17, 16)")  # its output
    assert rows["blocks.1.mlp.fc1"][:2] == ("Linear", "(17, 32)")
    assert rows["blocks.1.mlp.fc2"][:2] == ("Linear", "(17, 16)")
    assert rows["blocks.1"][:2] == ("Block", "(17, 16)")
    assert rows["norm"][:2] == ("LayerNorm", "(17, 16)")
    assert rows["head"][:2] == ("Linear", "(10,)")
    assert rows["output"][:2] == ("TinyViT", "(10,)")
    # the out_proj inside nn.MultiheadAttention is a module the attention never calls
    assert rows["blocks.0.attn.out_proj"][2] == "(never runs: not a tap)"


# -- recording --------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_resnet18_records_what_a_manual_forward_with_hooks_gives(tmp_path, images_csv,
                                                                reduction):
    torch.manual_seed(1)
    model = build_network("torchvision:resnet18")[0].model  # torchvision's or the copy
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    layers = ["layer3", "layer4", "fc", "layer4.1.bn2", "layer1.0.bn1"]
    out = tmp_path / "r18.h5"
    assert record("torchvision:resnet18", str(images_csv), out, weights=str(tmp_path / "r18.pth"),
                  layers=layers, reduction=reduction, **FAST) == out

    x = inputs(images_csv, TORCHVISION_PREPROCESSING)
    got, logits = manual_taps(model, x, layers)

    def reduce(t):
        if t.ndim == 2:
            return t
        return t.amax(dim=(2, 3)) if reduction == "max" else t.mean(dim=(2, 3))

    table = table_layers(out)
    for name in layers:
        np.testing.assert_allclose(table[name], reduce(got[name]).numpy(), rtol=1e-4,
                                   atol=1e-4, err_msg=name)
    # bn1's output before the in-place ReLU that follows it (an uncloned tap would be
    # after it; the spatial max cannot tell them apart, the mean can)
    if reduction == "mean":
        after_relu = reduce(got["layer1.0.bn1"].clamp(min=0)).numpy()
        assert not np.allclose(table["layer1.0.bn1"], after_relu, rtol=1e-3, atol=1e-3)
    with open_table(out) as t:
        assert t.layers == layers
        assert t.n_images == 6 and t.n_classes == 1000
        assert t.attrs["network"] == "torchvision:resnet18"
        assert t.attrs["network_definition"] in ("generator.torchvision_models",
                                                 f"torchvision {_torchvision_version()}")
        assert t.attrs["preprocess"] == "torchvision"
        info = t.layer_info("layer3").attrs
        assert info["reduction"] == reduction and list(info["spatial_shape"]) == [14, 14]
        assert "reduction" not in t.layer_info("fc").attrs
        np.testing.assert_array_equal(t.dataset("predictions")[()], logits.argmax(1).numpy())


def _torchvision_version() -> str:
    try:
        import torchvision
    except Exception:  # noqa: BLE001
        return "-"
    return torchvision.__version__


def test_a_vit_records_token_maps_reduced_over_tokens(tmp_path, images_csv, vit_file):
    layers = ["patch_embed", "blocks.0.attn", "blocks.1.mlp.fc2", "norm", "head"]
    tables = {}
    for reduction in ("max", "mean"):
        out = tmp_path / f"vit_{reduction}.h5"
        record(f"{vit_file}:build_with_preprocessing", str(images_csv), out, layers=layers,
               reduction=reduction, **FAST)
        tables[reduction] = out
    namespace = vit_namespace()
    model = namespace["build"]()
    got, logits = manual_taps(model, inputs(images_csv, namespace["PREPROCESSING"]), layers)
    assert got["blocks.1.mlp.fc2"].shape == (6, 17, 16)
    for reduction, out in tables.items():
        table = table_layers(out)
        for name in layers:
            t = got[name]
            if t.ndim == 4:
                want = t.amax(dim=(2, 3)) if reduction == "max" else t.mean(dim=(2, 3))
            elif t.ndim == 3:  # over the tokens
                want = t.amax(dim=1) if reduction == "max" else t.mean(dim=1)
            else:
                want = t
            np.testing.assert_allclose(table[name], want.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} {reduction}")
        with open_table(out) as t:
            assert t.class_names == [str(k) for k in range(10)]  # its outputs
            info = t.layer_info("blocks.1.mlp.fc2").attrs
            assert info["reduction"] == reduction and info["token_count"] == 17
            assert info["reduced_over"] == "tokens"
            assert list(t.layer_info("patch_embed").attrs["spatial_shape"]) == [4, 4]
            assert t.layer_info("head").attrs.get("reduction") is None
            np.testing.assert_array_equal(t.dataset("predictions")[()],
                                          logits.argmax(1).numpy())
    # the rest of the pipeline reads it: every unit of every layer gets its measures
    from analysis.selectivity import compute

    df = compute(tables["mean"], progress=False)
    assert df.groupby("layer").size().to_dict() == {
        "patch_embed": 16, "blocks.0.attn": 16, "blocks.1.mlp.fc2": 16, "norm": 16, "head": 10}


def test_a_user_module_callable_with_its_preprocessing_from_preprocess(
        tmp_path, images_csv, vit_file, monkeypatch):
    package = tmp_path / "user_models_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "vit.py").write_text(VIT_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = "user_models_pkg.vit:build"  # names no preprocessing
    with pytest.raises(ValueError, match="no preprocessing: give --preprocess"):
        record(ref, str(images_csv), tmp_path / "none.h5", layers=["head"], **FAST)
    spec = vit_namespace()["SPEC"]
    by_spec = tmp_path / "spec.h5"
    assert main(["--network", ref, "--preprocess", spec, "--images", str(images_csv),
                 "--out", str(by_spec), "--layers", "blocks.0", "head", "--keep", "all",
                 "--workers", "0", "--quiet"]) == 0
    by_attribute = tmp_path / "attribute.h5"
    record(f"{vit_file}:build_with_preprocessing", str(images_csv), by_attribute,
           layers=["blocks.0", "head"], **FAST)
    a, b = table_layers(by_spec), table_layers(by_attribute)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    with h5py.File(by_spec) as f:
        assert f.attrs["network"] == ref and f.attrs["preprocess"] == "custom"
    with h5py.File(by_attribute) as f:
        assert f.attrs["preprocess"] == "model"
        assert f.attrs["preprocessing"] == vit_namespace()["PREPROCESSING"].to_json()


def test_weights_load_strictly_and_a_wrong_file_names_the_key(tmp_path, vit_file, capsys):
    model = vit_namespace()["build"]()
    good = tmp_path / "good.pth"
    torch.save(model.state_dict(), good)
    ref = f"{vit_file}:build_with_preprocessing"
    assert main(["--network", ref, "--weights", str(good), "--list-layers"]) == 0
    state = model.state_dict()
    state["blocks.1.mlp.fc3.weight"] = state.pop("blocks.1.mlp.fc2.weight")
    torch.save(state, tmp_path / "renamed.pth")
    capsys.readouterr()
    assert main(["--network", ref, "--weights", str(tmp_path / "renamed.pth"),
                 "--list-layers"]) == 2
    assert "blocks.1.mlp.fc3.weight" in capsys.readouterr().err
    state = model.state_dict()
    state["head.weight"] = torch.zeros(7, 16)
    torch.save(state, tmp_path / "shape.pth")
    assert main(["--network", ref, "--weights", str(tmp_path / "shape.pth"),
                 "--list-layers"]) == 2
    err = capsys.readouterr().err
    assert "head.weight" in err and "(7, 16)" in err and "(10, 16)" in err
    (tmp_path / "x.caffemodel").write_bytes(b"")
    with pytest.raises(WeightsError, match="a .caffemodel fits caffenet"):
        load_network(ref, tmp_path / "x.caffemodel")


def test_unknown_layers_list_the_closest_names(tmp_path, images_csv, vit_file, capsys):
    out = str(tmp_path / "t.h5")
    assert main(["--network", "torchvision:resnet18", "--images", str(images_csv), "--out", out,
                 "--layers", "layer4", "layer5"]) == 2
    err = capsys.readouterr().err
    assert "no tap(s) ['layer5']" in err and "closest: layer4, layer3" in err
    assert "--list-layers lists them all" in err
    assert main(["--network", f"{vit_file}:build_with_preprocessing", "--images",
                 str(images_csv), "--out", out, "--layers", "blocks.1.mlp.fc3"]) == 2
    assert "closest: blocks.1.mlp.fc2" in capsys.readouterr().err
    # a hooked network names its layers: there is no default list
    assert main(["--network", f"{vit_file}:build_with_preprocessing", "--images",
                 str(images_csv), "--out", out]) == 2
    assert "--list-layers" in capsys.readouterr().err
    # a shared module (a BasicBlock's ReLU runs twice) is no tap
    assert main(["--network", "torchvision:resnet18", "--images", str(images_csv),
                 "--out", out, "--layers", "layer1.0.relu"]) == 2
    assert "layer1.0.relu (ReLU) runs 2 times" in capsys.readouterr().err
    assert not (tmp_path / "t.h5").exists()


# -- the hooks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(2)
    model = resnet18().eval()
    return HookedNet(model, (3, 64, 64)), torch.randn(2, 3, 64, 64)


def test_hooks_are_removed_after_a_forward_an_early_stop_and_an_error(small_resnet):
    net, x = small_resnet
    net(x, ["layer2", "fc", "output"])
    assert no_hooks(net)
    net(x, ["layer1"])  # stops early
    assert no_hooks(net)
    with pytest.raises(RuntimeError):
        net(torch.zeros(1, 2, 64, 64), ["layer2"])  # two channels: conv1 raises
    assert no_hooks(net)


def test_early_stop_runs_no_later_module(small_resnet):
    net, x = small_resnet
    calls = {"layer2": 0, "layer4": 0, "fc": 0}
    handles = [net.model.get_submodule(name).register_forward_hook(
        lambda m, a, o, name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls]
    try:
        out = net(x, ["layer1.1.conv1", "layer2"])
        assert calls == {"layer2": 1, "layer4": 0, "fc": 0}
        assert set(out) == {"layer1.1.conv1", "layer2"}
        net(x, ["layer1", "output"])  # the output needs the whole forward
        assert calls == {"layer2": 2, "layer4": 1, "fc": 1}
    finally:
        for h in handles:
            h.remove()


def test_a_tap_is_a_clone_that_later_in_place_steps_leave_alone(small_resnet):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))
    net = HookedNet(model, (8,))
    x = torch.randn(5, 8)
    out = net(x, ["0", "1", "output"])
    with torch.no_grad():
        pre = model[0](x)
    assert (pre < 0).any()
    torch.testing.assert_close(out["0"], pre)           # not the ReLU's in-place result
    torch.testing.assert_close(out["1"], pre.clamp(min=0))
    torch.testing.assert_close(out["output"], model(x))
    # in torchvision's ResNet: bn1's output goes through ReLU(inplace=True), bn2's through
    # the in-place shortcut sum
    resnet, images = small_resnet
    taps = resnet(images, ["layer1.0.bn1", "layer1.0.bn2", "layer1.0"])
    block = resnet.model.layer1[0]
    with torch.no_grad():
        stem = resnet.model.maxpool(resnet.model.relu(resnet.model.bn1(resnet.model.conv1(images))))
        bn1 = block.bn1(block.conv1(stem))
        bn2 = block.bn2(block.conv2(torch.relu(bn1)))
    torch.testing.assert_close(taps["layer1.0.bn1"], bn1)
    torch.testing.assert_close(taps["layer1.0.bn2"], bn2)
    torch.testing.assert_close(taps["layer1.0"], torch.relu(bn2 + stem))


def test_gradients_reach_the_input_through_a_tap(small_resnet):
    net, x = small_resnet
    x = x.clone().requires_grad_(True)
    for p in net.parameters():
        p.requires_grad_(False)
    net(x, ["layer3"])["layer3"][:, 5].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_threads_sharing_a_network_get_their_own_taps(small_resnet):
    net, x = small_resnet
    want = {"a": net(x, ["layer1"])["layer1"], "b": net(x[:1], ["layer3", "output"])}
    results, errors = {}, []

    def run(key):
        try:
            for _ in range(5):
                results[key] = net(x, ["layer1"])["layer1"] if key == "a" else \
                    net(x[:1], ["layer3", "output"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    torch.testing.assert_close(results["a"], want["a"])
    torch.testing.assert_close(results["b"]["layer3"], want["b"]["layer3"])
    assert no_hooks(net)


def test_list_layers_and_layer_shapes_of_a_bare_model():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 8, 5))
    layers = list_layers(model, (2, 10))
    assert [(la.name, la.type, la.shape, la.calls) for la in layers] == [
        ("0", "Conv1d", (4, 8), 1), ("1", "Flatten", (32,), 1), ("2", "Linear", (5,), 1),
        ("output", "Sequential", (5,), 1)]
    net = HookedNet(model, (2, 10))
    assert net.layer_shapes(["0", "output"]) == {"0": (4, 8), "output": (5,)}
    # a Conv1d's (C, L) map is channels first: not a token map
    with pytest.raises(ValueError, match="cannot record layer 0"):
        rec._layer_attrs(net, "0", (4, 8), "max")


# -- reductions, preprocessing specs, references ----------------------------------------


def test_reduce_activation_over_tokens_and_errors_by_hand():
    t = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]]])  # (1, 3 tokens, 2 channels)
    assert reduce_activation(t, "max").tolist() == [[3.0, 5.0]]
    assert reduce_activation(t, "mean").tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match=r"layer blocks\.0 of shape \(1, 2, 3, 4, 5\)"):
        reduce_activation(torch.zeros(1, 2, 3, 4, 5), "max", "blocks.0")


def test_preprocessing_specs():
    p = parse_preprocessing("size=224,crop=224,mean=0.5/0.4/0.3,std=0.2/0.2/0.2,scale=1/255")
    assert (p.size, p.crop, p.mean, p.std, p.scale) == (224, 224, (0.5, 0.4, 0.3),
                                                       (0.2, 0.2, 0.2), 1 / 255)
    assert p.resize == "shorter" and p.channels == "RGB"  # torchvision's, not given
    assert parse_preprocessing("crop=192") == Preprocessing(
        **{**TORCHVISION_PREPROCESSING.__dict__, "crop": 192})
    grey = parse_preprocessing("channels=L,mean=0.5,std=0.25,size=28,crop=28,resize=square")
    assert grey.mean == (0.5,) and grey.channels == "L"
    for bad, message in (("size=224,colour=rgb", "unknown key 'colour'"),
                         ("size=big", "'size=big': not a number"),
                         ("mean=0.5/0.5", "mean has 2 value"),
                         ("channels=L", "mean has 3 value"),
                         ("size=200,crop=224", "crop 224 is larger than size 200"),
                         ("resize=stretch", "resize=stretch: choose shorter, square"),
                         ("size", "'size' is not KEY=VALUE"),
                         ("std=1/0/1", "std has a zero")):
        with pytest.raises(ValueError, match=message):
            parse_preprocessing(bad)
    # any network takes a spec over its own default
    assert get_spec("caffenet").preprocessing_named("crop=200").crop == 200


def test_references_that_cannot_be_models_are_explained(tmp_path):
    with pytest.raises(ValueError, match="cannot come from server/"):
        get_spec("server.app:create_app")
    with pytest.raises(ValueError, match="no such file"):
        get_spec(f"{tmp_path / 'missing.py'}:build")
    (tmp_path / "broken.py").write_text("raise RuntimeError('no model today')\n")
    with pytest.raises(ValueError, match="fails on import.*no model today"):
        get_spec(f"{tmp_path / 'broken.py'}:build")
    (tmp_path / "other.py").write_text("def build():\n    return 3\nNOT_CALLABLE = 1\n")
    with pytest.raises(ValueError, match="AttributeError"):
        get_spec(f"{tmp_path / 'other.py'}:missing")
    with pytest.raises(ValueError, match="not a callable"):
        get_spec(f"{tmp_path / 'other.py'}:NOT_CALLABLE")
    with pytest.raises(ValueError, match="returned a int, not an nn.Module"):
        build_network(f"{tmp_path / 'other.py'}:build", "size=32,crop=32")
    with pytest.raises(ValueError, match="ModuleNotFoundError"):
        get_spec("no_such_package_here.models:build")
    with pytest.raises(ValueError, match="unknown network 'vgg'.*torchvision:<name>"):
        get_spec("vgg")
    if _torchvision_version() == "-":
        with pytest.raises(ValueError, match="the project defines only torchvision:resnet18"):
            build_network("torchvision:vgg16")


def test_torchvision_is_used_when_it_imports(monkeypatch, caplog):
    import sys
    import types

    built = []

    def get_model(name, weights=None):
        assert weights is None
        if name != "resnet18":
            raise ValueError(f"Unknown model {name}")
        built.append(name)
        return resnet18()

    fake = types.ModuleType("torchvision")
    fake.__version__ = "0.99-test"
    fake.models = types.SimpleNamespace(get_model=get_model)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    caplog.set_level("INFO", logger="generator.loading")
    net, spec = build_network("torchvision:resnet18")
    assert built == ["resnet18"] and net.definition == "torchvision 0.99-test"
    assert "torchvision 0.99-test's constructor" in caplog.text
    assert spec.preprocessing == TORCHVISION_PREPROCESSING and net.input_shape == (3, 224, 224)
    with pytest.raises(ValueError, match="torchvision:vgg99: Unknown model vgg99"):
        build_network("torchvision:vgg99")
