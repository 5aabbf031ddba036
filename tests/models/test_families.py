"""The family table: every supported architecture family, as one tiny random model built here,
through every capability, with the invariants each capability promises.

Rows are the families of :data:`iclft.models.anatomy.FAMILIES` (a family added there without a
tiny config in ``tests/conftest.py`` fails here). Columns: the ICL engine (== plain
``generate``; shared-query loglik == whole-sequence loglik; packed where the family says so),
capture (recomputed attention scores reproduce the heads), patching (a site given its own clean
value changes nothing; exact patching's identities; attribution on the same components), K/V
training (only K and V move, Q of a fused projection included), layer-causal GD (each layer's
gradient comes from its own exit only), full / LoRA / K/V / layer-causal fine-tuning through
the real Trainer, circuits and similarity end to end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import StoppingCriteriaList

from iclft.analysis.capture import capture, capture_qk
from iclft.analysis.pairs import make_pairs
from iclft.analysis.patching import (
    attribution_patching,
    encode_pair,
    exact_patching,
    patched_metric,
    tokenizes_alike,
)
from iclft.finetune.config import TrainingSettings
from iclft.finetune.layer_causal import freeze_readout, layer_causal_losses
from iclft.finetune.methods import get_method
from iclft.icl.decode import NewlineStop
from iclft.icl.engine import Engine
from iclft.icl.prompts import DemoPool, build_prompt
from iclft.models import LoadedModel, ResolvedModel
from iclft.models.anatomy import (
    CAPABILITIES,
    FAMILIES,
    Component,
    Site,
    anatomy,
    attention_for,
    family_names,
)
from iclft.tasks import get_task

FAMILY_NAMES = family_names()
_CANDS = [" True", " False"]


@pytest.fixture(scope="module")
def family_models(tiny_tokenizer, tiny_model_factory):
    """One tiny model per family, built once for this module, with the family's ``auto``
    attention implementation."""
    return {f: tiny_model_factory(f, len(tiny_tokenizer), seed=0) for f in FAMILY_NAMES}


def test_the_table_covers_every_family_the_papers_used():
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"} <= set(FAMILY_NAMES)
    assert {"gpt2", "gpt_neox", "gpt_neo", "phi3", "olmo2"} <= set(FAMILY_NAMES)
    assert len(CAPABILITIES) >= 6


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_auto_attention_is_the_familys(family, family_models):
    fam = next(f for f in FAMILIES if f.name == family)
    impl = family_models[family].config._attn_implementation
    assert impl == ("sdpa" if fam.sdpa else "eager") == attention_for(fam.model_types[0])


# ----- the ICL engine -------------------------------------------------------------------------


def _prompts(task_name, shots, n):
    task = get_task(task_name)
    qs = task.generate("clean", n, 5) + task.generate("misleading", n, 5)
    pool = DemoPool(task, 5, "shared", max(shots))
    return [build_prompt(task, q, pool.demos(q, i, k), k) for k in shots for i, q in enumerate(qs)]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_engine_equals_plain_generate(family, family_models, tiny_tokenizer):
    model, tok = family_models[family], tiny_tokenizer
    fam = anatomy(model).family
    prompts = _prompts("expression", (0, 1, 3), 2)
    eng = Engine(model, tok, batch_size=4, max_new_tokens=5)
    got = eng.generate([p.text for p in prompts], [p.prefix for p in prompts])
    assert (eng.stats.packed_batches > 0) == (fam.packable and eng.window is None)
    for p, g in zip(prompts, got):
        enc = tok(p.text, return_tensors="pt")
        n = enc.input_ids.shape[1]
        out = model.generate(
            **enc,
            max_new_tokens=5,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([NewlineStop(tok, n)]),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        assert g == tok.decode(out[0, n:], skip_special_tokens=True), (family, p.text)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_shared_query_loglik_equals_whole_sequences(family, family_models, tiny_tokenizer):
    model = family_models[family]
    prompts = _prompts("boolean", (0, 2), 2)
    texts, hints = [p.text for p in prompts], [p.prefix for p in prompts]
    conts = [_CANDS] * len(prompts)
    got = Engine(model, tiny_tokenizer, batch_size=3).loglik(texts, conts, hints)
    ref = Engine(model, tiny_tokenizer, batch_size=3, share_queries=False).loglik(
        texts, conts, hints
    )
    for a, b in zip(got, ref):
        assert a == pytest.approx(b, abs=1e-4)
    with torch.no_grad():  # and a plain teacher-forced forward of one prompt
        t = texts[-1]
        n = len(tiny_tokenizer(t)["input_ids"])
        for c, score in zip(_CANDS, got[-1]):
            ids = torch.tensor([tiny_tokenizer(t + c)["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            want = sum(float(logp[i - 1, ids[0, i]]) for i in range(n, ids.shape[1]))
            assert score == pytest.approx(want, abs=1e-4)


# ----- capture and patching -------------------------------------------------------------------


def _ids(tok, text="(3+2)+(4-4)*(1-7)= The result is:"):
    return torch.tensor([tok(text)["input_ids"]])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_recomputed_scores_reproduce_the_heads(family, family_models, tiny_tokenizer, hooks_left):
    """softmax(causal scores) @ v == each head's output, in every layer (the windows of the
    tiny models are longer than the text, so the causal mask is the whole mask)."""
    an = anatomy(family_models[family])
    ids = _ids(tiny_tokenizer)
    T = ids.shape[1]
    qk = capture_qk(an, input_ids=ids)
    heads = capture(an, [Site(layer, "heads") for layer in range(an.n_layers)], input_ids=ids)
    values: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(an.n_layers):

        def keep(m, a, o, _layer=layer):
            values[_layer] = o.detach()

        handles.append(an.kv_projections(layer).v.register_forward_hook(keep))
    try:
        with torch.no_grad():
            an.model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    for layer in range(an.n_layers):
        kv = an.kv_projections(layer)
        v = values[layer][..., kv.v_cols] if kv.v_cols is not None else values[layer]
        v = v.view(1, T, an.n_kv_heads, an.head_dim).transpose(1, 2)
        v = v.repeat_interleave(an.n_heads // an.n_kv_heads, dim=1)
        s = qk[layer].scores()
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        p = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
        out = (p @ v).transpose(1, 2).reshape(1, T, -1)
        torch.testing.assert_close(out, heads[Site(layer, "heads")], atol=1e-5, rtol=1e-4)
    assert hooks_left(an.model) == 0


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_site_given_its_own_clean_value_changes_nothing(
    family, family_models, tiny_tokenizer, hooks_left
):
    an = anatomy(family_models[family])
    ids = _ids(tiny_tokenizer)
    sites = [Site(layer, kind) for layer in range(an.n_layers) for kind in ("heads", "attn")]
    sites += [Site(layer, kind) for layer in range(an.n_layers) for kind in ("mlp", "resid")]
    with torch.no_grad():
        clean = an.model(input_ids=ids).logits
        acts = capture(an, sites, input_ids=ids)
        for site in sites:
            with an.hooks({site: lambda x, _a=acts[site]: _a.clone()}):
                again = an.model(input_ids=ids).logits
            torch.testing.assert_close(again, clean, atol=1e-6, rtol=1e-5)
        # and a resid site given another value changes the output
        with an.hooks({Site(0, "resid"): lambda x: torch.zeros_like(x)}):
            assert not torch.allclose(an.model(input_ids=ids).logits, clean)
    assert hooks_left(an.model) == 0


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_exact_and_attribution_patching(family, family_models, tiny_tokenizer, hooks_left):
    an = anatomy(family_models[family])
    pairs = make_pairs("parity", 1, seed=0, shots=1, same_length=tokenizes_alike(tiny_tokenizer))
    pair = encode_pair(tiny_tokenizer, pairs[0])
    last = an.n_layers - 1
    clean, corrupt, nothing = patched_metric(an, pair, [])
    assert clean != corrupt and nothing == pytest.approx(corrupt, abs=1e-5)
    _, _, full = patched_metric(an, pair, [Component(0, "resid")], positions="all")
    assert full == pytest.approx(clean, abs=1e-4)
    _, _, query = patched_metric(an, pair, [Component(last, "resid")], positions="query")
    assert query == pytest.approx(clean, abs=1e-4)
    comps = an.components(("head", "attn", "mlp", "resid"))
    exact = exact_patching(an, pair, comps)
    attr = attribution_patching(an, pair, comps)
    for effects in (exact, attr):
        assert effects.components == tuple(c.name for c in comps)
        assert np.isfinite(effects.raw).all()
    assert exact.gap == pytest.approx(clean - corrupt, abs=1e-4)
    # the last residual stream on the query positions carries the whole clean run
    i = comps.index(Component(last, "resid"))
    assert exact.raw[i] == pytest.approx(clean - corrupt, abs=1e-4)
    assert hooks_left(an.model) == 0


# ----- fine-tuning ----------------------------------------------------------------------------


_SETTINGS = TrainingSettings(lora_rank=4, lora_alpha=8.0)


def _batch(tok):
    task = get_task("expression")
    texts = [task.render_demo(e) + "\n" for e in task.generate("clean", 3, 2)]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return enc.input_ids, enc.attention_mask, labels


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_kv_training_moves_only_keys_and_values(family, tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory(family, len(tiny_tokenizer), seed=4).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = get_method("kv").select(model, _SETTINGS)
    an = anatomy(model)
    kv = {p.name: p for p in an.kv_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(kv)
    opt = torch.optim.AdamW([p.param for p in kv.values()], lr=1e-2, weight_decay=0.0)
    ids, mask, labels = _batch(tiny_tokenizer)
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        moved = ~torch.isclose(p.detach(), before[n], rtol=0, atol=0)
        if n not in kv:
            assert not moved.any(), f"{family}: {n} moved"
            continue
        k = kv[n]
        if k.keep is None:
            assert moved.any(), n
            continue
        keep = torch.zeros(p.shape[k.axis], dtype=torch.bool)
        keep[k.keep] = True
        along = moved.movedim(k.axis, 0).reshape(p.shape[k.axis], -1).any(dim=1)
        assert not along[~keep].any(), f"{family}: query features of {n} moved"
        assert along[keep].any(), f"{family}: K/V features of {n} did not move"
    # the K and V projections: for a fused one, the q features are the rest
    proj = an.kv_projections(0)
    if proj.k_cols is not None:
        q_cols, k_cols, v_cols = an.fused_columns()
        cols = torch.cat([q_cols, k_cols, v_cols]).sort().values
        assert torch.equal(cols, torch.arange(len(cols)))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_layer_causal_gradient_isolation(family, tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory(family, len(tiny_tokenizer), seed=1)
    model = get_method("full").select(model, _SETTINGS)
    freeze_readout(model)
    an = anatomy(model)
    per_layer = [[p for p in b.parameters() if p.requires_grad] for b in an.blocks]
    assert all(per_layer)
    ids, mask, labels = _batch(tiny_tokenizer)
    losses = layer_causal_losses(model, ids, mask, labels)
    assert len(losses) == an.n_layers
    with torch.no_grad():  # the last exit is the ordinary loss
        ordinary = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(losses[-1].detach(), ordinary, rtol=1e-5, atol=1e-6)
    flat = [p for ps in per_layer for p in ps]
    for m, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
        at = 0
        for layer, ps in enumerate(per_layer):
            own = grads[at : at + len(ps)]
            at += len(ps)
            if layer == m:
                assert sum(float(g.abs().sum()) for g in own if g is not None) > 0
            else:
                assert all(g is None or torch.count_nonzero(g) == 0 for g in own), (m, layer)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_fine_tuning_method_trains_and_saves(
    family, tmp_path, tiny_tokenizer, tiny_model_factory
):
    """Full, LoRA, K/V-only and layer-causal (on K/V) through the real Trainer, each saving a
    model that loads back; K/V leaves every other weight as it was."""
    from safetensors.torch import load_file

    from iclft.finetune.config import make_config
    from iclft.finetune.train import run_finetune
    from iclft.models import load_model

    d = tmp_path / "base"
    tiny_model_factory(family, len(tiny_tokenizer), seed=2).save_pretrained(
        d, safe_serialization=True
    )
    tiny_tokenizer.save_pretrained(d)
    base = load_file(str(d / "model.safetensors"))
    for method in ("full", "lora", "kv", "layer-causal"):
        cfg = make_config(
            model=str(d), tasks=["boolean"], train_n=4, steps=1, lr=1e-2, batch_size=4,
            warmup_steps=0, eval_every=0, method=method, params="kv",
        )  # fmt: skip
        out = tmp_path / method
        run_finetune(cfg, out, show_progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert manifest["model"]["attn_implementation"] == attention_for(family)
        lm = load_model(str(out), device="cpu")
        assert anatomy(lm.model).family.name == family
        if method == "kv":
            trained = load_file(str(out / "model.safetensors"))
            kv = {p.name for p in anatomy(lm.model).kv_parameters()}
            for name, w in base.items():
                if name in trained and name not in kv:
                    assert torch.equal(trained[name], w), f"{family}: {name} moved"


# ----- circuits and similarity ----------------------------------------------------------------


def _loaded(model, tok, name):
    resolved = ResolvedModel(spec=name, kind="local", path=None)
    return LoadedModel(model, tok, resolved, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_circuits_and_similarity_end_to_end(family, tmp_path, tiny_tokenizer, tiny_model_factory):
    from iclft.analysis.pipeline import CircuitSpec, run_circuits
    from iclft.analysis.settings import SimilaritySpec
    from iclft.analysis.similarity import run_similarity

    n = len(tiny_tokenizer)
    loaded = {
        "base": _loaded(tiny_model_factory(family, n, seed=0), tiny_tokenizer, "base"),
        "ft": _loaded(tiny_model_factory(family, n, seed=1), tiny_tokenizer, "ft"),
    }
    spec = CircuitSpec(task="parity", shots=1, n=2, estimator="attribution", top_k=2, n_boot=10)
    report = run_circuits(spec, tmp_path / "circuits", loaded=loaded, ft_model=None).to_json()
    assert set(report["settings"]) == {"base", "icl", "ft"}
    assert report["anatomy"]["arch"] == family
    sim = SimilaritySpec(
        task="parity", shots=1, n=2, lr=0.05, seed=0, random_draws=2, n_boot=20, heldout=2
    )
    data = run_similarity(sim, tmp_path / "similarity", loaded=loaded["base"]).to_json()
    assert data["anatomy"]["arch"] == family
    for per_metric in data["metrics"].values():
        for name in ("simaou", "simam"):
            for st in per_metric[name].values():
                assert -1 <= st["value"] <= 1, (name, st)


# ----- loading, the CLI, the plan -------------------------------------------------------------


def test_an_unsupported_family_is_refused_before_any_weight_is_read(tmp_path):
    from iclft.errors import UserError
    from iclft.models import load_model

    d = tmp_path / "mamba"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    (d / "model.safetensors").write_bytes(b"not weights")  # reading it would fail otherwise
    with pytest.raises(UserError, match="'mamba' is not a supported.*supported: llama, mistral"):
        load_model(str(d), device="cpu")


def test_auto_attention_is_chosen_per_family_and_recorded(
    tmp_path, tiny_tokenizer, tiny_model_factory
):
    from iclft.errors import UserError
    from iclft.models import load_model

    d = tmp_path / "neo"
    tiny_model_factory("gpt_neo", len(tiny_tokenizer)).save_pretrained(d, safe_serialization=True)
    tiny_tokenizer.save_pretrained(d)
    lm = load_model(str(d), device="cpu")
    assert lm.attn_implementation == "eager" == lm.model.config._attn_implementation
    assert lm.describe()["attn_implementation"] == "eager"
    with pytest.raises(UserError, match="gpt_neo models have no sdpa"):
        load_model(str(d), device="cpu", attn_implementation="sdpa")


def test_models_families_lists_every_family(monkeypatch):
    from typer.testing import CliRunner

    from iclft.cli.models import app

    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, ["families"])
    assert result.exit_code == 0, result.output
    for f in FAMILIES:
        assert f.name in result.output
    assert "every family runs" in result.output


def test_paper_config_dry_run_prints_the_plan_offline(iclft_main, monkeypatch):
    from typer.testing import CliRunner

    from iclft.cli import app
    from iclft.run.config import load_experiment, packaged_config
    from iclft.run.plan import plan

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = packaged_config("paper")
    cfg = load_experiment(path)
    assert cfg.models == [
        "Qwen/Qwen1.5-0.5B",
        "Qwen/Qwen1.5-1.8B",
        "Qwen/Qwen1.5-7B",
        "EleutherAI/pythia-1.4b",
        "EleutherAI/gpt-neo-1.3B",
    ]
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    for spec in cfg.models:
        assert spec in out
    for stage in plan(cfg):
        assert stage.key in out
    code, err = iclft_main("run", str(path))
    assert code == 2 and "--output" in err
