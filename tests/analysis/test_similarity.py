"""ICL vs gradient descent: the metrics' analytic facts, the random-update baseline, SimAM's key
positions, fp32 GD under a bf16 model, the controls and intervals, and the pipeline end to end
on a tiny model (library and CLI)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from iclft.analysis.settings import SimilaritySpec
from iclft.analysis.similarity import (
    choose_queries,
    key_positions,
    query_start,
    record,
    run_similarity,
)
from iclft.analysis.similarity_metrics import (
    Recordings,
    compare,
    per_layer,
    rec2ftp,
    simam,
    simam_delta,
    simaou,
    simaou_norm,
)
from iclft.analysis.similarity_table import LAYER_METRICS, RANDOM, UPDATES
from iclft.analysis.similarity_updates import random_update
from iclft.errors import UserError
from iclft.finetune.gd import sgd_on_demonstrations
from iclft.models import LoadedModel, ResolvedModel


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _loaded(model, tokenizer) -> LoadedModel:
    resolved = ResolvedModel(spec="tiny", kind="local", path=None)
    return LoadedModel(model, tokenizer, resolved, torch.device("cpu"), torch.float32)


# ----- metrics -------------------------------------------------------------------------------


def test_an_update_against_itself_gives_one():
    g = _gen(0)
    h_zsl, h_icl = torch.randn(5, 3, 16, generator=g), torch.randn(5, 3, 16, generator=g)
    m_zsl, m_icl = torch.randn(3, 4, 7, generator=g), torch.randn(3, 4, 7, generator=g)
    ones = torch.ones(5, 3, dtype=torch.float64)
    torch.testing.assert_close(simaou(h_zsl, h_icl, h_icl), ones)
    torch.testing.assert_close(simaou_norm(h_zsl, h_icl, h_icl), ones)
    torch.testing.assert_close(simam(m_icl, m_icl), torch.ones(3, 4, dtype=torch.float64))
    torch.testing.assert_close(
        simam_delta(m_zsl, m_icl, m_icl), torch.ones(3, 4, dtype=torch.float64)
    )
    # and the opposite update gives -1
    torch.testing.assert_close(simaou(h_zsl, h_icl, 2 * h_zsl - h_icl), -ones)


def test_simaou_of_independent_random_updates_is_about_zero():
    g = _gen(1)
    n, layers, d = 64, 3, 4096
    h = torch.randn(n, layers, d, generator=g)
    icl = h + torch.randn(n, layers, d, generator=g)
    ft = h + torch.randn(n, layers, d, generator=g)
    prof = per_layer(simaou(h, icl, ft))
    assert prof.shape == (layers,)
    assert prof.abs().max() < 0.02  # std of the mean: 1/sqrt(d n) = 0.002


def test_simaou_norm_has_a_floor_of_one_quarter_under_pure_noise():
    """docs/science.md: updates of pure noise with norm √3·‖h_ZSL‖ give SimAOU_norm = 1/4, not 0."""
    g = _gen(2)
    n, layers, d = 64, 3, 4096

    def noise_like(h: torch.Tensor) -> torch.Tensor:
        e = torch.randn(h.shape, generator=g)
        return e / e.norm(dim=-1, keepdim=True) * math.sqrt(3) * h.norm(dim=-1, keepdim=True)

    h = torch.randn(n, layers, d, generator=g) * torch.rand(n, layers, 1, generator=g) * 5
    icl, ft = h + noise_like(h), h + noise_like(h)
    assert per_layer(simaou(h, icl, ft)).abs().max() < 0.02
    torch.testing.assert_close(
        per_layer(simaou_norm(h, icl, ft)),
        torch.full((layers,), 0.25, dtype=torch.float64),
        atol=0.02,
        rtol=0,
    )


def test_per_layer_averages_over_queries_and_heads():
    q1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # [L=2, H=2]
    q2 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(per_layer([q1, q2]), torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(
        per_layer(torch.tensor([[1.0, 2.0], [3.0, 6.0]])), torch.tensor([2.0, 4.0])
    )


def test_compare_shapes_with_ragged_keys():
    g = _gen(3)
    n, layers, heads, d = 3, 2, 4, 8
    keys = [5, 7, 6]  # every query has its own number of key tokens

    def recordings() -> Recordings:
        h = torch.randn(n, layers, d, generator=g)
        return Recordings(h, tuple(torch.randn(layers, heads, k, generator=g) for k in keys))

    zsl, icl, ft = recordings(), recordings(), recordings()
    out = compare(zsl, icl, ft)
    assert set(out) == set(LAYER_METRICS)
    assert all(v.shape == (layers,) for v in out.values())
    assert all(((v >= -1) & (v <= 1)).all() for v in out.values())
    same = compare(zsl, icl, icl)
    for name in LAYER_METRICS:
        torch.testing.assert_close(same[name], torch.ones(layers, dtype=torch.float64))
    # SimAM by hand for layer 0: mean over queries of the mean over heads of cos(m_ICL, m_FT)
    by_hand = (
        sum(
            torch.nn.functional.cosine_similarity(mi[0], mf[0], dim=-1).mean()
            for mi, mf in zip(icl.m, ft.m)
        )
        / n
    )
    assert abs(float(out["simam"][0]) - float(by_hand)) < 1e-5


def test_rec2ftp():
    assert rec2ftp({1}, {1, 2, 3}, {1, 2, 4}) == 0.5  # FT newly right: {2, 4}; ICL too: {2}
    assert rec2ftp(set(), {1, 2}, {1, 2}) == 1.0
    assert rec2ftp({1, 2}, {3}, {1}) is None  # FT gets nothing new right


# ----- the random update ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_random_update_matches_gd_norms_in_a_random_direction(arch, tiny_models, tiny_tokenizer):
    base = tiny_models[arch]
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    gd = sgd_on_demonstrations(base, tiny_tokenizer, "parity", 2, 0, 0.1)
    rand = random_update(base, gd, seed=0)
    base_p, gd_p = dict(base.named_parameters()), dict(gd.named_parameters())
    moved = 0
    for name, p in rand.named_parameters():
        p, d_gd = p.detach(), (gd_p[name] - base_p[name]).detach()
        d_rand = p - base_p[name].detach()
        assert torch.equal(base_p[name], before[name])  # base untouched
        assert ((d_rand != 0) <= (d_gd != 0)).all()  # only where GD moved
        if d_gd.any():
            moved += 1
            assert abs(float(d_rand.norm() - d_gd.norm())) < 1e-4 * float(d_gd.norm())
            cosine = float((d_rand * d_gd).sum() / (d_rand.norm() * d_gd.norm()))
            assert abs(cosine) < 0.5
    assert moved >= 4  # K and V of two layers
    if arch == "gpt2":  # the query third of the fused c_attn stays put
        c = "transformer.h.0.attn.c_attn.weight"
        torch.testing.assert_close(dict(rand.named_parameters())[c][:, :32], base_p[c][:, :32])
    again = dict(random_update(base, gd, seed=0).named_parameters())
    other = dict(random_update(base, gd, seed=1).named_parameters())
    name = next(n for n in gd_p if (gd_p[n] != base_p[n]).any())
    assert torch.equal(again[name], dict(rand.named_parameters())[name])
    assert not torch.equal(other[name], again[name])


# ----- key positions -------------------------------------------------------------------------


def _with_bos(tokenizer):
    """The tiny tokenizer, adding a BOS token as Llama's and Gemma's tokenizers do."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    bos = tok.convert_tokens_to_ids("<bos>")
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    tok.bos_token = "<bos>"
    assert tok("Q: 1")["input_ids"][0] == bos
    return tok


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("task", ["expression", "code", "boolean", "relation", "parity"])
def test_keys_are_exactly_the_query_tokens(task, bos, tiny_tokenizer):
    """(With this tokenizer the separator never tokenises apart from the query, so the
    reference boundary and query+separator agree: test_similarity_keys.py has one where not.)"""
    tok = _with_bos(tiny_tokenizer) if bos else tiny_tokenizer
    queries, skipped = choose_queries(tok, task, shots=2, n=3, seed=0)
    old, _ = choose_queries(tok, task, shots=2, n=3, seed=0, keys="query+separator")
    assert [q.icl_keys for q in old] == [q.icl_keys for q in queries]
    assert len(queries) == 3
    for q in queries:
        z0 = query_start(tok, q.zsl_text, q.zsl_prefix)
        i0 = query_start(tok, q.icl_text, q.icl_prefix)
        assert list(q.zsl_keys) == list(range(z0, len(q.zsl_ids)))
        assert list(q.icl_keys) == list(range(i0, len(q.icl_ids)))
        assert 0 not in q.zsl_keys and 0 not in q.icl_keys  # never BOS (nor instruction start)
        assert [q.icl_ids[k] for k in q.icl_keys] == [q.zsl_ids[k] for k in q.zsl_keys]
        assert q.icl_keys[-1] == len(q.icl_ids) - 1  # the read position is a key in both
        query = q.zsl_text[len(q.zsl_prefix) :]
        assert q.icl_text.endswith(query)
        text = tok.decode([q.zsl_ids[k] for k in q.zsl_keys])
        # the query's text, plus at most the part of a token merged across the boundary
        assert text.endswith(query) and len(text) - len(query) <= 2, (text, query)


def test_the_old_key_set_is_a_named_option(tiny_tokenizer):
    tok = _with_bos(tiny_tokenizer)
    (q,), _ = choose_queries(tok, "parity", shots=2, n=1, seed=0, keys="instruction+query")
    assert list(q.zsl_keys) == list(range(len(q.zsl_ids)))  # BOS, instruction and query
    assert [q.icl_ids[k] for k in q.icl_keys] == list(q.zsl_ids)
    assert len(q.icl_ids) > len(q.icl_keys)  # demonstration positions dropped
    with pytest.raises(UserError, match="allowed: instruction\\+query, query\\+separator, "
                       "reference"):  # fmt: skip
        choose_queries(tok, "parity", shots=2, n=1, seed=0, keys="all")
    with pytest.raises(ValueError, match="SimAM key set"):
        SimilaritySpec(task="parity", shots=1, n=1, lr=0.1, keys="all")


def test_keys_refuse_prompts_whose_query_differs(tiny_tokenizer):
    zsl_prefix, icl_prefix = "Say it.\n\n", "Say it.\n\nQ: 1\nA: 1\n\n"
    ok = key_positions(
        tiny_tokenizer, zsl_prefix + "Q: 2\nA:", zsl_prefix, icl_prefix + "Q: 2\nA:", icl_prefix
    )
    assert ok is not None
    zk, ik = ok
    assert [tiny_tokenizer.decode(x) for x in (zk, ik)] != []
    bad = key_positions(
        tiny_tokenizer, zsl_prefix + "Q: 2\nA:", zsl_prefix, icl_prefix + "Q: 3\nA:", icl_prefix
    )
    assert bad is None


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_recorded_scores_are_to_the_query_tokens_only(arch, tiny_models, tiny_tokenizer):
    """On every family, m holds one score per query token, each the score from the last position
    to that token, in ZSL and ICL alike (BOS and instruction left out)."""
    from capture_reference import attention_scores

    from iclft.models.anatomy import anatomy

    tok = _with_bos(tiny_tokenizer)
    an = anatomy(tiny_models[arch])
    queries, _ = choose_queries(tok, "boolean", shots=2, n=2, seed=0)
    for icl in (False, True):
        rec = record(an, queries, icl, lambda n: None)
        for i, q in enumerate(queries):
            ids, keys = (q.icl_ids, q.icl_keys) if icl else (q.zsl_ids, q.zsl_keys)
            n_query = len(ids) - query_start(tok, *((q.icl_text, q.icl_prefix) if icl else
                                                     (q.zsl_text, q.zsl_prefix)))  # fmt: skip
            assert rec.m[i].shape == (an.n_layers, an.n_heads, n_query)
            every = attention_scores(an, slice(None), input_ids=torch.tensor([ids]))[:, 0]
            torch.testing.assert_close(rec.m[i], every[..., list(keys)])
            assert min(keys) > 0 and max(keys) == len(ids) - 1


# ----- the pipeline --------------------------------------------------------------------------


def test_run_similarity_writes_everything(tmp_path, tiny_model_factory, tiny_tokenizer):
    from iclft.icl.engine import Engine
    from iclft.icl.evaluate import EvalSpec, evaluate_task
    from iclft.tasks import get_task

    model = tiny_model_factory("llama", len(tiny_tokenizer), seed=3)
    spec = SimilaritySpec(task="parity", shots=2, n=4, lr=0.05, seed=0, random_draws=3, n_boot=200)
    calls = []
    report = run_similarity(
        spec,
        tmp_path,
        loaded=_loaded(model, tiny_tokenizer),
        track=lambda d, t: calls.append(d) or (lambda n: None),
    )
    data = json.loads((tmp_path / "similarity.json").read_text())
    assert data == json.loads(json.dumps(report.to_json()))
    assert data["n_queries"] == 4
    assert set(data["metrics"]) == {"trained", "untrained"}
    for mname, per_metric in data["metrics"].items():
        for name in LAYER_METRICS:
            settings = {*UPDATES, *RANDOM.values()}
            settings |= {"dai_uniform"} if name.startswith("simaou") else set()
            settings |= {"zsl"} if name == "simam" else set()
            assert set(per_metric[name]) == settings
            for setting, st in per_metric[name].items():
                assert -1 <= st["ci_low"] <= st["value"] <= st["ci_high"] <= 1, (name, setting)
                assert len(st["per_layer"]) == 2
                # rotary (llama): the SimAM metrics average layer 1 only
                layers = data["simam_layers"] if name.startswith("simam") else [0, 1]
                mean = sum(st["per_layer"][j] for j in layers) / len(layers)
                assert abs(st["value"] - mean) < 1e-5
            for u in UPDATES:
                rnd = per_metric[name][RANDOM[u]]
                assert len(rnd["draws"]) == 3 and rnd["sd"] > 0  # spread over draws
                assert rnd["min"] <= rnd["value"] <= rnd["max"]
                assert abs(rnd["value"] - sum(rnd["draws"]) / 3) < 1e-5
        s = data["summary"]
        pre = "" if mname == "trained" else "untrained_"
        assert (
            s[f"{pre}simam_delta_random_lcgd"]["value"]
            == (per_metric["simam_delta"]["random_lcgd"]["value"])
        )
    assert set(data["metrics"]["trained"]["rec2ftp"]) == set(UPDATES)
    assert "rec2ftp" not in data["metrics"]["untrained"]  # no answers on the untrained model
    # the untrained model's numbers are its own
    t, u = (data["metrics"][m]["simaou"]["gd"]["value"] for m in ("trained", "untrained"))
    assert t != u
    for mname in ("trained", "untrained"):
        norms = data["update_norms"][mname]
        for upd in UPDATES:  # each random control matched to its own update's norms
            assert norms[upd]["total"] > 0
            assert (
                abs(norms[RANDOM[upd]]["total"] - norms[upd]["total"]) < 1e-4 * norms[upd]["total"]
            )
        assert norms["lcgd"]["total"] != norms["gd"]["total"]
    assert data["update_cast"] is None  # fp32 model: nothing cast
    assert set(data["per_query"]["correct"]) == {"zsl", "icl", *UPDATES}
    assert set(data["f2t"]) == set(UPDATES)
    for u in UPDATES:
        c = data["per_query"]["correct"]
        assert data["f2t"][u]["n"] == sum(
            not a and b and d for a, b, d in zip(c["zsl"], c["icl"], c[u])
        )
    assert "DIFFERS" in data["protocol"]["position"]
    assert data["simam_layers"] == [1] and "layer 0 left out" in data["protocol"]["simam_layers"]
    assert any(d.startswith("untrained lcgd") for d in calls)
    assert sum(d.startswith("trained random_gd[") for d in calls) == 3
    png = tmp_path / "similarity_per_layer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["command"] == "analyze similarity"
    assert manifest["spec"]["lr"] == 0.05

    # seeded: the same spec gives the same numbers, intervals included
    again = run_similarity(spec, tmp_path / "again", loaded=_loaded(model, tiny_tokenizer))
    assert again.metrics == data["metrics"]

    # the ZSL and ICL answers are the evaluator's (same queries, same demonstrations)
    engine = Engine(model, tiny_tokenizer)
    ev = evaluate_task(
        engine,
        get_task("parity"),
        EvalSpec(tasks=("parity",), variants=("clean",), shots=(0, 2), n=4, scoring="auto"),
        model_label="tiny",
    )
    for setting, k in (("zsl", 0), ("icl", 2)):
        expected = [r.correct for r in ev.predictions if r.shots == k]
        assert data["per_query"]["correct"][setting] == expected


def test_cli_writes_the_report(tmp_path, monkeypatch, tiny_model_factory, tiny_tokenizer):
    import iclft.models

    loaded = _loaded(tiny_model_factory("qwen2", len(tiny_tokenizer)), tiny_tokenizer)
    monkeypatch.setattr(iclft.models, "load_model", lambda *a, **k: loaded)
    from iclft.cli import app

    out = tmp_path / "o"
    args = ["analyze", "similarity", "--task", "expression", "-k", "1", "-n", "2"]
    args += ["--random-draws", "2", "--no-untrained"]
    result = CliRunner().invoke(app, [*args, "--lr", "0.01", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "SimAOU_norm" in result.output and "random (LCGD norms)" in result.output
    data = json.loads((out / "similarity.json").read_text())
    assert data["spec"] == {
        "task": "expression", "shots": 1, "n": 2, "lr": 0.01, "seed": 0, "keys": "reference",
        "random_draws": 2, "untrained": False, "n_boot": 1000, "heldout": 16, "dtype": "float32",
    }  # fmt: skip
    assert set(data["metrics"]) == {"trained"}
    assert (out / "similarity_per_layer.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nope"], "unknown task"),
        (["--task", "parity", "--shots", "0"], "--shots: must be >= 1"),
        (["--task", "parity", "-n", "0"], "-n: must be >= 1"),
        (["--task", "parity", "--lr", "0"], "--lr: must be a positive"),
        (["--task", "parity", "--lr", "-0.1"], "--lr: must be a positive"),
        (["--task", "parity", "--lr", "nan"], "--lr: must be a positive"),
        (["--task", "parity", "--lr", "1e-3,x"], "--lr: must be a positive"),
        (["--task", "parity", "--seed", "-1"], "--seed: must be >= 0"),
        (["--task", "parity", "--random-draws", "0"], "--random-draws: must be >= 1"),
        (["--task", "parity", "--bootstrap", "-1"], "--bootstrap: must be >= 0"),
        ([], "--task: required setting is missing"),
        (["--task", "parity", "--keys", "all"], "unknown SimAM key set"),
    ],
)
def test_bad_input_fails_before_loading_a_model(args, message, tmp_path, monkeypatch):
    import iclft.models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(iclft.models, "load_model", no_load)
    from iclft.cli import app

    result = CliRunner().invoke(app, ["analyze", "similarity", *args, "-o", str(tmp_path / "o")])
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
    with pytest.raises(ValueError, match="lr"):
        SimilaritySpec(task="parity", shots=1, n=1, lr=0.0)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_record_reads_what_the_capture_functions_read(arch, tiny_models, tiny_tokenizer):
    """One forward per query gives the same h and m as attention_outputs/attention_scores."""
    from capture_reference import attention_outputs, attention_scores

    from iclft.models.anatomy import anatomy

    an = anatomy(tiny_models[arch])
    queries, _ = choose_queries(tiny_tokenizer, "code", shots=2, n=2, seed=1)
    for icl in (False, True):
        rec = record(an, queries, icl, lambda n: None)
        for i, q in enumerate(queries):
            ids = torch.tensor([q.icl_ids if icl else q.zsl_ids])
            keys = list(q.icl_keys if icl else q.zsl_keys)
            torch.testing.assert_close(rec.h[i], attention_outputs(an, input_ids=ids)[:, 0])
            torch.testing.assert_close(rec.m[i], attention_scores(an, keys, input_ids=ids)[:, 0])
            assert rec.m[i].shape == (2, 4, len(q.zsl_keys))
