"""EMOCA / DECA encoders (ig3d.models.resnet, ig3d.models.emoca, ig3d.convert.emoca): checkpoint layouts and
validation, the decomposition and Ig3D feature vectors, ONNX export.

Equality with upstream was measured outside the repo (no upstream code is kept here): yfeng95/DECA
decalib/models/{resnet,encoders}.py at a11554a and radekd91/emoca gdl/models/{ResNet,DecaEncoder}.py at
fef5472 (``load_ResNet50Model`` replaced by the bare ``ResNet(Bottleneck, [3, 4, 6, 3])``: it only copies
torchvision's init), torch 2.13.0 CPU. Upstream ``ResnetEncoder`` 236 / 50 / 128 with upstream's init, BN
running statistics calibrated on random images, then gamma, beta and the statistics perturbed; saved as
an EMOCA Lightning dict (``deca.`` prefix, ``deca.D_detail.*``, ``deca.flame.*``, ``emonet_loss.*`` extras
and an ``argparse.Namespace`` hyper-parameter object) and as a DECA ``deca_model.tar`` dict, read through
:func:`load_emoca_checkpoint` / :func:`build_emoca`. On 3x3x224x224 float32 inputs (outputs up to |334|)
the max abs diff of every encoder output is **0.0** (bitwise equal); the decomposition equals upstream's
``DECA.decompose_code`` / ``ExpDECA.decompose_code`` (run verbatim, incl. ``exp_deca_jaw_pose``) with
diff 0.0. ig3d's ``deca.``-prefixed keys equal upstream's ``state_dict()`` and
shared/reference/keys/emoca_encoder_keys.txt in names, order and shapes (966 keys).

Three ResNet-50s are heavy on a small CPU: the synthetic checkpoints give E_detail (and the checkpoints of
the layout/error tests) constant weights stored as stride-0 tensors (one element on disk), and ONNX is
checked on E_flame + E_expression only.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import reference_key_list

torch = pytest.importorskip("torch", reason="the EMOCA encoders need torch (pip install 'ig3d[torch]')")

from ig3d.convert.emoca import (  # noqa: E402  (after the torch skip)
    DROPPED_PREFIXES,
    UnsafeCheckpointError,
    build_emoca,
    encoder_schema,
    export_emoca_onnx,
    find_emoca_cfg,
    load_emoca,
    load_emoca_checkpoint,
    onnx_output_names,
    read_cfg_expression_flags,
    resolve_expression_extra,
)
from ig3d.models.emoca import (  # noqa: E402
    FULL_DIM,
    OUTPUT_DIMS,
    SHORT_DIM,
    EmocaEncoders,
    decompose_codes,
    emoca_full,
    emoca_short,
)
from ig3d.models.resnet import ResNet50  # noqa: E402

KEYS_FILE = "emoca_encoder_keys.txt"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def key_list():
    """[(key, shape)] of upstream's ``deca.E_flame/E_expression/E_detail.*`` entries, in upstream order."""
    return reference_key_list(KEYS_FILE)


def _tensor(key, shape, g, cheap: bool):
    """A plausible value for ``key``: random (conv/linear He-scaled, BN near identity with the residual
    branch's last BN damped so 16 blocks do not blow the activations up), or, when ``cheap``, one
    constant stored as a stride-0 tensor so the file holds one element per entry."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(1000, dtype=torch.int64)
    if cheap:
        if len(shape) >= 2:  # conv/linear: a weighted mean of the inputs, so activations stay finite
            value = 0.5 / int(np.prod(shape[1:]))
        else:  # BN gamma and running_var 1, everything else 0
            value = 1.0 if key.endswith(("running_var", "weight")) else 0.0
        return torch.tensor(value).expand(shape)
    if key.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if len(shape) >= 2:  # conv [O, I, k, k] or linear [O, I]
        return torch.randn(shape, generator=g) * (2.0 / int(np.prod(shape[1:]))) ** 0.5
    if key.endswith(".weight"):  # BN gamma
        scale = 0.3 if key.endswith("bn3.weight") else 1.0
        return (torch.rand(shape, generator=g) * 0.4 + 0.8) * scale
    return torch.randn(shape, generator=g) * 0.1  # BN beta, linear bias


def _state(key_list, random_encoders=(), seed: int = 0):
    """``deca.*`` state dict from the key list: the encoders in ``random_encoders`` random, the rest cheap."""
    g = torch.Generator().manual_seed(seed)
    return {k: _tensor(k, s, g, cheap=k.split(".")[1] not in random_encoders) for k, s in key_list}


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(key_list, tmp_path_factory):
    """Tensors-only Lightning-style dict (``{'state_dict': ...}``): loads with weights_only."""
    sd = _state(key_list, random_encoders=("E_flame", "E_expression"))
    path = _save(tmp_path_factory.mktemp("emoca") / "emoca.ckpt", {"state_dict": sd, "epoch": 10})
    return path, sd


@pytest.fixture(scope="module")
def model(checkpoint):
    return build_emoca(load_emoca_checkpoint(checkpoint[0]))


@pytest.fixture(scope="module")
def cheap_state(key_list):
    return _state(key_list)


@pytest.fixture(scope="module")
def images():
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    x[0, :, :112] = 0.0  # half a black frame: the valid range's end
    return x


# --------------------------------------------------------------------------------------------
# Schema and loading.

def test_schema_equals_upstream_key_list(key_list):
    ours = [("deca." + k, s) for k, s in encoder_schema().items()]
    assert len(ours) == 966
    assert ours == key_list
    for name in ("E_flame", "E_expression", "E_detail"):
        assert sum(k.startswith(f"deca.{name}.") for k, _ in ours) == 322
    assert list(encoder_schema(None, False)) == [k for k in encoder_schema() if k.startswith("E_flame.")]


def test_tensors_only_checkpoint_loads_with_weights_only(checkpoint, model):
    path, sd = checkpoint
    loaded = load_emoca_checkpoint(path)  # default weights_only=True
    assert list(loaded) == list(encoder_schema())  # prefix stripped, upstream order kept
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd["deca." + k]), k
    assert model.expression_dim == 50 and model.has_detail and not model.training


def test_lightning_checkpoint_with_objects_needs_trust(cheap_state, tmp_path):
    sd = dict(cheap_state)
    sd["deca.D_detail.layers.0.weight"] = torch.zeros(4, 3)
    sd["deca.flame.shapedirs"] = torch.zeros(5, 3, 4)
    sd["deca.uv_face_eye_mask"] = torch.zeros(1, 1, 4, 4)
    sd["emonet_loss.emonet.conv1.weight"] = torch.zeros(2, 3)
    sd["something_new.weight"] = torch.zeros(2)  # unlisted families are dropped too
    # Lightning 1.x keys callback states by class and may store hyper-parameters as objects; either
    # makes weights_only refuse the file.
    path = _save(tmp_path / "emoca.ckpt", {
        "state_dict": sd, "hyper_parameters": argparse.Namespace(n_exp=50),
        "callbacks": {argparse.Namespace: {"best_model_score": torch.tensor(3.25)}},
        "pytorch-lightning_version": "1.4.9"})
    with pytest.raises(UnsafeCheckpointError, match=r"trust_checkpoint=True.*Lightning"):
        load_emoca_checkpoint(path)
    loaded = load_emoca_checkpoint(path, trust_checkpoint=True)
    assert list(loaded) == list(encoder_schema())
    assert any(p in ("deca.D_detail.", "deca.flame.", "emonet_loss.") for p in DROPPED_PREFIXES)
    assert build_emoca(loaded).has_detail


def test_deca_tar_layout_loads(cheap_state, tmp_path):
    parts = {}
    for k, v in cheap_state.items():
        _, name, rest = k.split(".", 2)
        parts.setdefault(name, {})[rest] = v
    path = _save(tmp_path / "deca_model.tar", {"E_flame": parts["E_flame"], "E_detail": parts["E_detail"],
                                                "D_detail": {"layers.0.weight": torch.zeros(4, 3)}})
    loaded = load_emoca_checkpoint(path)
    assert list(loaded) == list(encoder_schema(None, True))
    m = build_emoca(loaded)
    assert m.expression_dim is None and m.E_expression is None and m.has_detail
    assert list(m.output_dims()) == list(OUTPUT_DIMS)


def test_with_detail_option(cheap_state, tmp_path):
    path = _save(tmp_path / "emoca.ckpt", {"state_dict": cheap_state})
    assert not any(k.startswith("E_detail.") for k in load_emoca_checkpoint(path, with_detail=False))
    no_detail = _save(tmp_path / "no_detail.ckpt",
                      {"state_dict": {k: v for k, v in cheap_state.items() if "E_detail" not in k}})
    m = build_emoca(load_emoca_checkpoint(no_detail))
    assert not m.has_detail and "detail" not in m.output_dims()
    with pytest.raises(ValueError, match="with_detail=True but the file has no E_detail"):
        load_emoca_checkpoint(no_detail, with_detail=True)


def test_missing_key_is_named(cheap_state, tmp_path):
    sd = dict(cheap_state)
    del sd["deca.E_expression.encoder.layer3.4.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing keys: E_expression\.encoder\.layer3\.4\.bn2\.running_var \[256\]"):
        load_emoca_checkpoint(_save(tmp_path / "c.ckpt", {"state_dict": sd}))
    sd = {k: v for k, v in cheap_state.items() if not k.startswith("deca.E_flame.")}
    with pytest.raises(ValueError, match=r"no E_flame entries"):
        load_emoca_checkpoint(_save(tmp_path / "c.ckpt", {"state_dict": sd}))


@pytest.mark.parametrize("key,shape", [("deca.E_flame.encoder.fc.weight", (1000, 2048)),  # torchvision's head
                                        ("deca.E_detail.layers.4.bias", (7,))])
def test_unexpected_encoder_key_is_named(cheap_state, tmp_path, key, shape):
    sd = dict(cheap_state)
    sd[key] = torch.zeros(shape)
    name = key[len("deca."):].replace(".", r"\.")
    with pytest.raises(ValueError, match=r"unexpected keys: " + name + r" " + str(list(shape)).replace("[", r"\[")):
        load_emoca_checkpoint(_save(tmp_path / "c.ckpt", {"state_dict": sd}))


def test_wrong_shape_is_named(cheap_state, tmp_path):
    sd = dict(cheap_state)
    sd["deca.E_flame.layers.2.weight"] = torch.zeros(235, 1024)
    with pytest.raises(ValueError, match=r"E_flame\.layers\.2\.weight: shape \[235, 1024\] in the checkpoint, "
                                         r"\[236, 1024\] expected"):
        load_emoca_checkpoint(_save(tmp_path / "c.ckpt", {"state_dict": sd}))
    sd = dict(cheap_state)
    sd["deca.E_expression.layers.2.weight"] = torch.zeros(51, 1024)
    sd["deca.E_expression.layers.2.bias"] = torch.zeros(51)
    with pytest.raises(ValueError, match=r"E_expression\.layers\.2\.weight: shape \[51, 1024\].*50 or 53 wide"):
        load_emoca_checkpoint(_save(tmp_path / "c.ckpt", {"state_dict": sd}))
    # build_emoca validates a state dict handed over directly, too.
    stripped = {k[len("deca."):]: v for k, v in cheap_state.items()}
    stripped["E_detail.encoder.bn1.weight"] = torch.ones(32)
    with pytest.raises(ValueError, match=r"E_detail\.encoder\.bn1\.weight: shape \[32\] in the checkpoint, \[64\]"):
        build_emoca(stripped)


def test_53_wide_expression_head_needs_to_be_told_what_its_extra_outputs_are(cheap_state):
    sd = {k[len("deca."):]: v for k, v in cheap_state.items() if "E_detail" not in k}
    sd["E_expression.layers.2.weight"] = torch.zeros(53, 1024)
    sd["E_expression.layers.2.bias"] = torch.zeros(53)
    with pytest.raises(ValueError, match=r"53 outputs.*exp_deca_jaw_pose.*exp_deca_global_pose.*expression_extra"):
        build_emoca(sd)
    for extra in ("jaw", "global"):
        m = build_emoca(sd, extra)
        assert m.expression_dim == 53 and m.expression_extra == extra and not m.has_detail
    with pytest.raises(ValueError, match="expected 'jaw' or 'global'"):
        build_emoca(sd, "neck")
    fifty = {k[len("deca."):]: v for k, v in cheap_state.items()}
    with pytest.raises(ValueError, match="a 50-wide E_expression: it holds no extra pose values"):
        build_emoca(fifty, "jaw")


# --------------------------------------------------------------------------------------------
# Decomposition and feature vectors.

def test_decompose_codes_matches_upstream_slices():
    g = torch.Generator().manual_seed(1)
    flame, exp, exp53, det = (torch.randn(2, n, generator=g) for n in (236, 50, 53, 128))
    out = decompose_codes(flame, exp, det)
    assert list(out) == list(OUTPUT_DIMS) == ["shape", "tex", "exp", "pose", "cam", "light", "detail"]
    for k, (a, b) in {"shape": (0, 100), "tex": (100, 150), "pose": (200, 206), "cam": (206, 209),
                      "light": (209, 236)}.items():
        assert torch.equal(out[k], flame[:, a:b]), k
    assert torch.equal(out["exp"], exp) and torch.equal(out["detail"], det)
    # DECA: no E_expression -> exp is E_flame's
    assert torch.equal(decompose_codes(flame)["exp"], flame[:, 150:200])
    # exp_deca_jaw_pose: E_expression's last 3 replace the jaw half of pose, global rotation kept
    j = decompose_codes(flame, exp53, expression_extra="jaw")
    assert torch.equal(j["exp"], exp53[:, :50])
    assert torch.equal(j["pose"], torch.cat([flame[:, 200:203], exp53[:, 50:]], 1))
    # exp_deca_global_pose: they replace the global rotation, E_flame's jaw kept (ExpDECA.decompose_code:
    # torch.cat([pose_code_exp_deca, pose_code_deca[:, 3:]], dim=1))
    gl = decompose_codes(flame, exp53, expression_extra="global")
    assert torch.equal(gl["exp"], exp53[:, :50])
    assert torch.equal(gl["pose"][:, :3], exp53[:, 50:53]) and torch.equal(gl["pose"][:, 3:], flame[:, 203:206])
    with pytest.raises(ValueError, match="53-wide exp_code needs expression_extra='jaw' or 'global'"):
        decompose_codes(flame, exp53)
    with pytest.raises(ValueError, match="50 or 53"):
        decompose_codes(flame, torch.zeros(2, 51))


def test_short_and_full_vectors():
    g = torch.Generator().manual_seed(2)
    out = {k: torch.randn(3, d, generator=g) for k, d in OUTPUT_DIMS.items()}
    short, full = emoca_short(out), emoca_full(out)
    assert short.shape == (3, SHORT_DIM) == (3, 156)
    assert full.shape == (3, FULL_DIM) == (3, 334)
    assert torch.equal(short, torch.cat([out["exp"], out["pose"], out["shape"]], 1))
    assert torch.equal(full, torch.cat([out["exp"], out["pose"], out["tex"], out["detail"], out["shape"]], 1))
    # numpy dicts (ONNX Runtime outputs) give the same vectors
    np.testing.assert_array_equal(emoca_full({k: v.numpy() for k, v in out.items()}), full.numpy())
    # never zero-filled (docs REFERENCE 1.8, item 2)
    with pytest.raises(KeyError, match="detail"):
        emoca_full({k: v for k, v in out.items() if k != "detail"})
    with pytest.raises(ValueError, match="'pose'"):
        emoca_short(dict(out, pose=out["pose"][:, :3]))


def test_forward_outputs(model, images):
    raw = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: raw.__setitem__(n, o.detach().clone()))
             for n in ("E_flame", "E_expression", "E_detail")]
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        for h in hooks:
            h.remove()
    assert list(out) == list(OUTPUT_DIMS)
    for k, d in OUTPUT_DIMS.items():
        assert out[k].shape == (2, d) and out[k].dtype == torch.float32, k
        assert torch.isfinite(out[k]).all(), k
    assert torch.equal(out["shape"], raw["E_flame"][:, :100])
    assert torch.equal(out["exp"], raw["E_expression"])  # EMOCA's, not E_flame's [150:200]
    assert not torch.equal(out["exp"], raw["E_flame"][:, 150:200])
    assert torch.equal(out["pose"], raw["E_flame"][:, 200:206])
    assert torch.equal(out["detail"], raw["E_detail"])
    # outputs depend on the image (the synthetic BN statistics are not degenerate)
    assert (out["shape"][0] - out["shape"][1]).abs().max() > 1e-3
    assert emoca_short(out).shape == (2, 156) and emoca_full(out).shape == (2, 334)

    # The same E_flame without E_expression (DECA) reports E_flame's expression.
    with torch.device("meta"):  # its E_flame is replaced at once: skip initialising one
        deca = EmocaEncoders(expression_dim=None, detail=False).eval()
    deca.E_flame = model.E_flame
    with torch.no_grad():
        d = deca(images[:1])
    assert list(d) == list(OUTPUT_DIMS)[:-1]
    torch.testing.assert_close(d["exp"], raw["E_flame"][:1, 150:200], rtol=0, atol=1e-5)


def test_trunk_rejects_other_sizes(model):
    with pytest.raises(ValueError, match=r"\[B, 3, 224, 224\].*got \[1, 3, 160, 160\]"):
        model.E_flame.encoder(torch.zeros(1, 3, 160, 160))
    with pytest.raises(ValueError, match=r"got \[3, 224, 224\]"):
        ResNet50()(torch.zeros(3, 224, 224))


# --------------------------------------------------------------------------------------------
# ONNX (E_flame + E_expression: exporting and running a third ResNet-50 adds nothing new).

@pytest.fixture(scope="module")
def short_model(model):
    with torch.device("meta"):
        m = EmocaEncoders(expression_dim=50, detail=False).eval()
    m.E_flame, m.E_expression = model.E_flame, model.E_expression
    return m


@pytest.fixture(scope="module")
def onnx_session(short_model, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx", reason="exporting needs the onnx package")
    path = tmp_path_factory.mktemp("emoca_onnx") / "emoca.onnx"
    export_emoca_onnx(short_model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # see conftest.one_torch_thread
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_onnx_output_names(model, short_model):
    assert onnx_output_names(model) == ("params_short", "params_full", "shape", "tex", "exp", "pose", "cam",
                                        "light", "detail")
    assert onnx_output_names(short_model) == ("params_short", "shape", "tex", "exp", "pose", "cam", "light")


@pytest.mark.parametrize("batch", [1, 2])
def test_onnx_matches_torch(short_model, images, onnx_session, batch):
    names = onnx_output_names(short_model)
    assert [o.name for o in onnx_session.get_outputs()] == list(names)
    x = images[:batch]
    got = onnx_session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        out = short_model(x)
    want = [emoca_short(out)] + [out[k] for k in names[1:]]
    for name, g, w in zip(names, got, want):
        assert g.shape == tuple(w.shape), name
        # 1e-4 relative to the output's scale (max |output|, at least 1): float32 convolutions summed in
        # another order differ by ulps of the scale. Here outputs reach |10| and diffs are ~1e-5; with
        # upstream-like weights outputs reach |220| and diffs 1.5e-4 (relative 1e-6) [measured].
        scale = max(1.0, float(w.abs().max()))
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-4 * scale, err_msg=name)


# --------------------------------------------------------------------------------------------
# A 53-wide E_expression: jaw pose or global rotation, from EMOCA's cfg.yaml or expression_extra.

def _cfg_text(stages) -> str:
    """An EMOCA model folder's cfg.yaml as OmegaConf writes it (block style, lists at the key's indent),
    with ``stages`` = {stage: (exp_deca_jaw_pose, exp_deca_global_pose)}."""
    parts = ["# written by OmegaConf.save"]
    for stage, (jaw, glob) in stages.items():
        parts += [f"{stage}:", "  model:", "    deca_class: ExpDECA", "    expression_backbone: deca_clone",
                  f"    exp_deca_global_pose: {str(glob).lower()}",
                  f"    exp_deca_jaw_pose: {str(jaw).lower()}  # jaw from E_expression",
                  "    n_exp: 50", "    flame_model_path: /data/FLAME/geometry/generic_model.pkl",
                  "  learning:", "    losses:", "    - name: l1", "      exp_deca_jaw_pose: not-a-flag",
                  "    optimizer: adam", "  inout:", f"    checkpoint_dir: /runs/x/{stage}/checkpoints"]
    return "\n".join(parts) + "\n"


@pytest.fixture(scope="module")
def state53(cheap_state):
    """Lightning-style state dict with a 53-wide E_expression (random last layer), no E_detail."""
    g = torch.Generator().manual_seed(5)
    sd = {k: v for k, v in cheap_state.items() if "E_detail" not in k}
    sd["deca.E_expression.layers.2.weight"] = torch.randn(53, 1024, generator=g)
    sd["deca.E_expression.layers.2.bias"] = torch.randn(53, generator=g)
    return sd


def _model_folder(root, state, stages=None, stage="detail"):
    """<root>/<stage>/checkpoints/deca-epoch=03.ckpt (+ <root>/cfg.yaml when ``stages``)."""
    ckpt = root / stage / "checkpoints" / "deca-epoch=03.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, ckpt)
    if stages is not None:
        (root / "cfg.yaml").write_text(_cfg_text(stages))
    return ckpt


def test_global_pose_head_lands_in_the_global_rotation(state53, tmp_path):
    """The forward pass puts the 3 extra outputs where EMOCA's ExpDECA.decompose_code puts them."""
    ckpt = _model_folder(tmp_path / "m", state53)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    outs = {}
    for extra in ("jaw", "global"):
        m = load_emoca(ckpt, expression_extra=extra)
        raw = {}
        hooks = [getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: raw.__setitem__(n, o.detach().clone()))
                 for n in ("E_flame", "E_expression")]
        with torch.no_grad():
            outs[extra] = m(x)
        for h in hooks:
            h.remove()
        assert raw["E_expression"].shape == (1, 53) and torch.equal(outs[extra]["exp"], raw["E_expression"][:, :50])
        if extra == "jaw":
            want = torch.cat([raw["E_flame"][:, 200:203], raw["E_expression"][:, 50:]], 1)
        else:
            want = torch.cat([raw["E_expression"][:, 50:], raw["E_flame"][:, 203:206]], 1)
        assert torch.equal(outs[extra]["pose"], want), extra
        assert torch.equal(emoca_short(outs[extra])[:, 50:56], want)  # Ig3D's vector keeps its layout
    assert not torch.equal(outs["jaw"]["pose"], outs["global"]["pose"])


@pytest.mark.parametrize("stages,expected", [
    # EMOCA's shipped settings: jaw pose in coarse training; the detail stage's own flags decide
    ({"coarse_pretraining": (True, False), "coarse": (True, False), "detail": (True, False)}, "jaw"),
    ({"coarse": (True, False), "detail": (False, True)}, "global"),
])
def test_cfg_yaml_beside_the_checkpoint_decides(state53, tmp_path, stages, expected):
    ckpt = _model_folder(tmp_path / "EMOCA_x", state53, stages)
    assert find_emoca_cfg(ckpt) == tmp_path / "EMOCA_x" / "cfg.yaml"
    assert load_emoca(ckpt).expression_extra == expected
    assert load_emoca(ckpt, expression_extra=expected).expression_extra == expected  # agreeing is fine
    other = "global" if expected == "jaw" else "jaw"
    with pytest.raises(ValueError, match=rf"expression_extra='{other}' contradicts .*cfg\.yaml sets "
                                         rf"detail\.model\.exp_deca_jaw_pose"):
        load_emoca(ckpt, expression_extra=other)


def test_without_cfg_yaml_the_user_must_say(state53, tmp_path):
    ckpt = _model_folder(tmp_path / "a" / "b" / "c" / "m", state53)
    (tmp_path / "cfg.yaml").write_text(_cfg_text({"detail": (True, False)}))  # 4 levels up: too far
    assert find_emoca_cfg(ckpt) is None
    with pytest.raises(ValueError, match=r"53 outputs.*no cfg\.yaml was found beside it \(looked in .*checkpoints, "
                                         r".*--expression-extra jaw\|global"):
        load_emoca(ckpt)
    assert load_emoca(ckpt, expression_extra="global").expression_extra == "global"
    # a 50-wide checkpoint needs nothing and refuses the argument
    assert resolve_expression_extra(ckpt, 50) is None and resolve_expression_extra(ckpt, None) is None
    with pytest.raises(ValueError, match="no E_expression: it holds no extra pose values"):
        resolve_expression_extra(ckpt, None, "jaw")


def test_cfg_yaml_that_does_not_settle_it(state53, tmp_path):
    # the checkpoint's stage says neither flag (a 50-wide head): only an explicit value settles it
    ckpt = _model_folder(tmp_path / "m1", state53, {"coarse": (True, False), "detail": (False, False)})
    with pytest.raises(ValueError, match=r"detail\.model\.exp_deca_jaw_pose=False.*50 wide.*expression_extra="):
        load_emoca(ckpt)
    assert load_emoca(ckpt, expression_extra="jaw").expression_extra == "jaw"
    # both flags (a 56-wide head) do not describe a 53-wide one either
    ckpt = _model_folder(tmp_path / "m2", state53, {"detail": (True, True)})
    with pytest.raises(ValueError, match="56 wide"):
        load_emoca(ckpt)
    # the checkpoint is not in <stage>/checkpoints/: stages that agree answer, stages that disagree do not
    for name, stages, ok in (("m3", {"coarse": (False, True), "detail": (False, True)}, True),
                             ("m4", {"coarse": (True, False), "detail": (False, True)}, False)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cfg.yaml").write_text(_cfg_text(stages))
        ckpt = folder / "emoca.ckpt"
        torch.save({"state_dict": state53}, ckpt)
        if ok:
            assert load_emoca(ckpt).expression_extra == "global"
        else:
            with pytest.raises(ValueError, match="the stages disagree"):
                load_emoca(ckpt)


def test_cfg_reader(tmp_path):
    text = _cfg_text({"coarse": (True, False), "detail": (False, True)})
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    want = {"coarse": {"jaw": True, "global": False}, "detail": {"jaw": False, "global": True}}
    assert read_cfg_expression_flags(path, use_pyyaml=False) == want  # the built-in reader
    yaml = pytest.importorskip("yaml", reason="compares the built-in reader with PyYAML")
    assert yaml.safe_load(text)["detail"]["model"]["exp_deca_global_pose"] is True  # the text is real YAML
    assert read_cfg_expression_flags(path, use_pyyaml=True) == want
    # a flat config with a top-level model section; YAML's other spellings of booleans; quoted keys
    flat = tmp_path / "flat.yaml"
    flat.write_text("model:\n  'exp_deca_jaw_pose': yes\n  exp_deca_global_pose: False\n")
    for use in (False, True):
        assert read_cfg_expression_flags(flat, use_pyyaml=use) == {"": {"jaw": True, "global": False}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("detail:\n  model:\n    exp_deca_jaw_pose: maybe\n")
    for use in (False, True):
        with pytest.raises(ValueError, match=r"bad\.yaml: detail\.model\.exp_deca_jaw_pose: expected true or false"):
            read_cfg_expression_flags(bad, use_pyyaml=use)


def test_convert_cli_expression_extra(state53, tmp_path):
    import json

    from ig3d.cli import main

    ckpt = _model_folder(tmp_path / "m", state53)
    assert main(["convert", "emoca", str(ckpt), "-o", str(tmp_path / "none"), "--no-onnx"]) == 1
    assert not (tmp_path / "none").exists()
    assert main(["convert", "emoca", str(ckpt), "-o", str(tmp_path / "out"), "--no-onnx",
                 "--expression-extra", "global"]) == 0
    with np.load(tmp_path / "out" / "emoca.npz", allow_pickle=False) as z:
        assert z["E_expression.layers.2.weight"].shape == (53, 1024)
    assert json.loads((tmp_path / "out" / "emoca.json").read_text())["kind"] == "emoca"
    assert main(["convert", "smirk", str(ckpt), "-o", str(tmp_path / "s"), "--no-onnx",
                 "--expression-extra", "jaw"]) == 1
