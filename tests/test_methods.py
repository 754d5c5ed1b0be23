"""minidept.methods, the paper's part: the methods' modules, parameter budgets and PromptConfig.

Budgets (docs/methods.md sections 1-4) are checked twice: by formula (`budget`,
`parameter_count`) and by counting the trainable tensors of a real `PromptedModel`
at the paper's widths. Each module is checked against its equation written out in
the test, with a check that the comparison is not vacuous (the update made non-zero).
"""

import json
import warnings

import pytest
import torch
from conftest import make_hf_gpt2, make_hf_t5
from hypothesis import given, settings
from hypothesis import strategies as st

import minidept
from minidept.methods import (AdaptiveOffset, LowRankEmbeddingUpdate, MultiSpaceProjection, PromptConfig, PromptFusion, SoftPrompt, budget, parameter_count)
from minidept.prompted import PromptedModel

# (m, r, trainable parameters) from docs/methods.md, l = 100, s = 256
DEPT_D768 = [(0, 75, 76_800), (20, 60, 76_800), (40, 45, 76_800), (60, 30, 76_800), (80, 15, 76_800)]
DEPT_D512 = [(0, 66, 50_688), (20, 53, 50_944), (40, 40, 51_200), (60, 26, 50_688), (80, 13, 50_944)]
ADEPT_D768 = [(0, 49, None), (20, 39, None), (40, 29, None), (60, 19, 76_051), (80, 9, None)]


@pytest.mark.parametrize("d, table", [(768, DEPT_D768), (512, DEPT_D512)])
def test_dept_budget_table(d, table):
    for m, r, count in table:
        assert budget("dept", l=100, m=m, s=256, d=d) == r, (m, d)
        assert parameter_count("dept", m=m, r=r, s=256, d=d) == count, (m, d)


def test_adept_budget_table():
    for m, r, count in ADEPT_D768:
        assert budget("adept", l=100, m=m, s=256, d=768) == r, m
        if count is not None:
            assert parameter_count("adept", m=m, r=r, s=256, d=768) == count


def test_pt_and_ept_counts():
    assert parameter_count("pt", m=100, r=0, s=256, d=768) == 76_800
    assert parameter_count("pt", m=100, r=0, s=256, d=512) == 51_200
    # EPT at m = 60, d = 768: 46,080 + 1,024 r + 4*(2*768) + 768*4 <= 76,800 -> r = 21, exactly 76,800
    assert budget("ept", l=100, m=60, s=256, d=768) == 21
    assert parameter_count("ept", m=60, r=21, s=256, d=768) == 76_800


def _count_built(model: PromptedModel) -> int:
    return sum(p.numel() for p in model.trainable_parameters())


@pytest.mark.parametrize("kind, d", [("t5", 768), ("t5", 512), ("gpt2", 768)])
def test_budget_tables_by_counting_a_built_model(tmp_path, kind, d):
    """The tables again, counted on real prompted models at the paper's widths (tiny depth and vocab)."""
    if kind == "t5":
        make_hf_t5(tmp_path / "m", d_model=d, d_kv=8, num_heads=4, d_ff=16, num_layers=1, num_decoder_layers=1)
    else:
        make_hf_gpt2(tmp_path / "m", n_embd=d, n_head=4, n_layer=1, n_positions=512)
    backbone = minidept.load_model(tmp_path / "m")
    backbone_params = sum(p.numel() for p in backbone.parameters())
    rows = [("dept", m, r, c) for m, r, c in (DEPT_D768 if d == 768 else DEPT_D512)]
    if d == 768:
        rows += [("adept", m, r, c) for m, r, c in ADEPT_D768 if c is not None]
        rows += [("ept", 60, 21, 76_800)]
    rows += [("pt", 100, 0, 100 * d)]
    for method, m, r, count in rows:
        model = PromptedModel(backbone, PromptConfig(method, l=100, m=m if method != "pt" else None))
        assert model.config.r == r, (method, m)
        assert _count_built(model) == count == model.config.count(d), (method, m)
        assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == 0
    assert sum(p.numel() for p in backbone.parameters()) == backbone_params  # nothing was added to it


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(["dept", "adept", "ept"]), l=st.integers(0, 400), m_frac=st.floats(0, 1),
       s=st.integers(1, 1024), d=st.integers(1, 2048), n_spaces=st.integers(1, 8), k=st.integers(1, 4))
def test_budget_is_the_largest_rank_under_l_times_d(method, l, m_frac, s, d, n_spaces, k):
    m = int(m_frac * l)
    count = lambda r: parameter_count(method, m, r, s, d, n_spaces, k)  # noqa: E731
    if count(1) > l * d:  # not even rank 1 fits: a clear error, never r = 0
        with pytest.raises(ValueError, match="no room for rank 1"):
            budget(method, l, m, s, d, n_spaces, k)
        return
    r = budget(method, l, m, s, d, n_spaces, k)
    assert r >= 1
    assert count(r) <= l * d < count(r + 1)


# --------------------------------------------------------------------------- #
# The modules on their own
# --------------------------------------------------------------------------- #

def test_soft_prompt_inits():
    table = torch.randn(6000, 8)
    a = SoftPrompt(10, 8, "vocab", table, seed=3, exclude_ids={0, 1})
    b = SoftPrompt(10, 8, "vocab", table, seed=3, exclude_ids={0, 1})
    c = SoftPrompt(10, 8, "vocab", table, seed=4, exclude_ids={0, 1})
    assert torch.equal(a.P, b.P) and not torch.equal(a.P, c.P)
    rows = [(table[:5000] == row).all(dim=1).nonzero().flatten().tolist() for row in a.P]
    assert all(len(r) == 1 and r[0] >= 2 for r in rows)           # each row is one of ids 2..4999
    assert len({r[0] for r in rows}) == 10                         # without replacement
    text = SoftPrompt(5, 8, "text", table, text_ids=[7, 9])
    assert torch.equal(text.P, table[[7, 9, 7, 9, 7]])
    random = SoftPrompt(400, 8, "random", table, seed=0)
    assert abs(random.P.std().item() - table.std().item()) < 0.1
    assert SoftPrompt(0, 8, "vocab", table).P.shape == (0, 8)
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        SoftPrompt(4, 8, "zeros", table)
    with pytest.raises(ValueError, match="needs the token ids"):
        SoftPrompt(4, 8, "text", table)


def test_low_rank_update_is_dept_equation():
    update = LowRankEmbeddingUpdate(s=16, r=4, d=8, alpha=8.0)
    assert update.A.abs().max() <= 0.5 and update.A.abs().min() > 0 and torch.equal(update.B, torch.zeros(4, 8))
    E = torch.randn(2, 5, 8)
    assert torch.equal(update(E), E)                               # B = 0: no change at all
    with torch.no_grad():
        update.B.normal_()
    expected = E + 8.0 / 2 * (update.A @ update.B)[:5]             # scale = alpha / sqrt(r)
    assert torch.allclose(update(E), expected, atol=1e-6)
    positions = torch.tensor([[3], [15]])                         # generation: one token at position 3 / 15
    assert torch.allclose(update(E[:, :1], positions)[:, 0], E[:, 0] + update.matrix()[[3, 15]], atol=1e-6)
    with pytest.raises(ValueError, match="longer than s=16"):
        update(torch.randn(1, 17, 8))


def test_adaptive_offset_is_adept_equation():
    offset = AdaptiveOffset(d=8, r=3, dropout=0.1).eval()
    E = torch.randn(2, 5, 8)
    assert torch.equal(offset(E), E)                               # W2 = b2 = 0
    with torch.no_grad():
        for p in (offset.b1, offset.W2, offset.b2):
            p.normal_()
    expected = E + torch.relu(E @ offset.W1 + offset.b1) @ offset.W2 + offset.b2
    assert torch.allclose(offset(E), expected, atol=1e-6)
    table = torch.randn(11, 8)
    assert torch.allclose(offset.fold(table), offset(table[None])[0], atol=1e-6)
    offset.train()
    torch.manual_seed(0)
    E = torch.randn(4, 50, 8)
    assert not torch.equal(offset(E), offset(E))                   # dropout in training
    offset.fold(table)
    assert offset.training                                         # fold restores the mode


def test_ept_modules_start_as_identity_and_then_act():
    P_s, K = torch.randn(4, 8), torch.zeros(16, 8)
    fusion, projection = PromptFusion(), MultiSpaceProjection(d=8, n_spaces=3, k=2)
    assert list(fusion.parameters()) == []
    assert torch.equal(fusion(P_s, K), P_s)                        # K = 0
    assert torch.equal(projection(P_s), P_s)                       # V = 0, even with N = 3 (1/3 is inexact)
    K = torch.randn(16, 8)
    assert torch.allclose(fusion(P_s, K), P_s + torch.softmax(P_s @ K.T / 8 ** 0.5, -1) @ K, atol=1e-6)
    with torch.no_grad():
        projection.V.normal_()
        projection.W_g.normal_()
    g = torch.softmax(P_s.mean(0) @ projection.W_g, -1)
    expected = sum(g[i] * (P_s + P_s @ projection.U[i] @ projection.V[i]) for i in range(3))
    assert torch.allclose(projection(P_s), expected, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_low_rank_update_at_given_positions_adds_those_rows(data):
    """Generation: token j of row b at position positions[b, j] gets row positions[b, j] of scale * (A @ B)."""
    s, r, d = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 8))
    update = LowRankEmbeddingUpdate(s=s, r=r, d=d, alpha=data.draw(st.floats(0.5, 16)),
                                    generator=torch.Generator().manual_seed(data.draw(st.integers(0, 100))))
    with torch.no_grad():
        update.B.normal_(generator=torch.Generator().manual_seed(1))
    B, L = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 6))
    positions = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, s - 1), min_size=L, max_size=L),
                                                min_size=B, max_size=B)))
    E = torch.randn(B, L, d, generator=torch.Generator().manual_seed(2))
    full = update.scale * (update.A @ update.B)                    # (s, d): every position's offset
    with torch.no_grad():
        out = update(E, positions)
    assert torch.allclose(out, E + full[positions], atol=1e-5), (out - E - full[positions]).abs().max()
    assert torch.allclose(update.matrix(), full)
    assert not torch.equal(out, E)                                  # not vacuous: an offset was really added
    if L <= s:                                                      # positions 0..L-1 are the default
        default = torch.arange(L).expand(B, L)
        with torch.no_grad():
            assert torch.allclose(update(E, default), update(E), atol=1e-6)
    with torch.no_grad():                                           # positions s, s+1, ... (never trained on): none
        assert torch.equal(update(E, positions + s), E)


# --------------------------------------------------------------------------- #
# Validation: a ValueError naming the bad value, before anything is built
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("call, message", [
    (lambda: budget("dept", l=10, m=20, s=256, d=768), "m=20 is longer than l=10"),
    (lambda: budget("dept", l=100, m=-1, s=256, d=768), "m=-1"),
    (lambda: budget("dept", l=100, m=10, s=-5, d=768), "s=-5"),
    (lambda: budget("dept", l=100, m=10, s=256, d=1.5), "d=1.5"),
    (lambda: budget("lora", l=100, m=10, s=256, d=768), "unknown method 'lora'"),
    (lambda: budget("dept", l=100, m=100, s=256, d=768), "no room for rank 1"),
    (lambda: PromptConfig("dept", l=10), "m=60 is longer than l=10"),
    (lambda: PromptConfig("dept", l=100, m=110), "m=110 is longer than l=100"),
    (lambda: PromptConfig("dept", r=0), "r=0"),
    (lambda: PromptConfig("dept", r=-3), "r=-3"),
    (lambda: PromptConfig("prefix"), "unknown method 'prefix'"),
    (lambda: PromptConfig("pt", init="zeros"), "unknown init 'zeros'"),
    (lambda: PromptConfig("pt", init="text"), "init_text_ids"),
    (lambda: PromptConfig("pt", m=20), "m=20 with method 'pt'"),
    (lambda: PromptConfig("pt", r=4), "r=4 with method 'pt'"),
    (lambda: PromptConfig("dept", max_length=0), "max_length=0"),
    (lambda: PromptConfig("dept", l=-1, m=0), "l=-1"),
    (lambda: PromptConfig("adept", dropout=1.0), "dropout=1.0"),
    (lambda: PromptConfig("dept", alpha=0.0), "alpha=0.0"),
    (lambda: PromptConfig("dept", overflow="ignore"), "overflow='ignore'"),
    (lambda: PromptConfig("dept", l=100, m=100).resolve(768), "no room for rank 1"),
    (lambda: PromptConfig("dept", m=60, max_length=1000).resolve(768, n_positions=1024),
     "exceeds the model's context of 1024"),
    (lambda: PromptConfig("pt", l=100, max_length=1000).resolve(768, n_positions=1024), "lower max_length to 924"),
])
def test_bad_values_are_named(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_config_defaults_are_the_published_settings():
    dept = PromptConfig("dept")
    assert (dept.l, dept.m, dept.r, dept.max_length, dept.alpha, dept.init) == (100, 60, None, 256, 8.0, "vocab")
    assert dept.resolve(768).r == 30 and dept.resolve(512).r == 26
    assert PromptConfig("adept").resolve(768).r == 19
    pt = PromptConfig("pt")
    assert (pt.m, pt.r) == (100, 0)   # PT's prompt is m = l tokens
    assert PromptConfig("dept", m=40, r=45).resolve(768).r == 45  # an explicit r is kept
    with pytest.warns(UserWarning, match="more than PT's"):
        PromptConfig("dept", m=60, r=31).resolve(768)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # r from the budget never goes over it
        for method in ("dept", "adept", "ept"):
            resolved = PromptConfig(method).resolve(768)
            assert resolved.count(768) <= 100 * 768
    assert PromptConfig(**json.loads(PromptConfig("ept", r=3, init="random").to_json())) == \
        PromptConfig("ept", r=3, init="random")                     # the adapter metadata's round trip
    # JSON gives lists back; the config stays hashable and equal
    from_json = PromptConfig("pt", init="text", init_text_ids=[5, 6])
    assert from_json == PromptConfig("pt", init="text", init_text_ids=(5, 6)) and hash(from_json)


def test_gpt2_context_checked_when_building(tmp_path):
    make_hf_gpt2(tmp_path / "g")  # n_positions = 64
    backbone = minidept.load_model(tmp_path / "g")
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        PromptedModel(backbone, PromptConfig("dept", l=20, m=8, max_length=60))
    PromptedModel(backbone, PromptConfig("dept", l=20, m=8, max_length=56))  # 8 + 56 = 64 fits


def test_not_a_backbone_is_refused():
    with pytest.raises(TypeError, match="PromptedModel needs a minidept backbone.*got Linear"):
        PromptedModel(torch.nn.Linear(2, 2), PromptConfig("pt", l=4))


def test_the_papers_part_imports_nothing_of_minidept():
    """methods.py can be read, and copied into a notebook, alone: torch and the standard library only."""
    import ast

    import minidept.methods

    tree = ast.parse(open(minidept.methods.__file__, encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] if node.level == 0 else "." for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert "torch" in imported and "minidept" not in imported and "." not in imported, sorted(imported)


def test_each_rule_of_a_methods_sizes_is_checked_in_one_place():
    """check_sizes is the one place: budget, parameter_count and PromptConfig give the same message for the
    same mistake, and methods.py writes each rule once."""
    import inspect

    import minidept.methods
    from minidept.methods import check_sizes

    def message(call):
        with pytest.raises(ValueError) as error:
            call()
        return str(error.value)

    assert message(lambda: budget("dept", l=100, m=-1, s=256, d=768)) == message(lambda: PromptConfig("dept", m=-1)) \
        == message(lambda: check_sizes("dept", m=-1)) == "m=-1: must be an integer of at least 0"
    assert message(lambda: budget("dept", l=10, m=20, s=256, d=768)) == message(lambda: PromptConfig("dept", l=10, m=20))
    unknown = {message(lambda: budget("lora", 100, 10, 256, 768)), message(lambda: PromptConfig("lora")),
               message(lambda: parameter_count("lora", 10, 1, 256, 768))}
    assert unknown == {"unknown method 'lora': choose one of pt, dept, adept, ept"}
    source = inspect.getsource(minidept.methods)
    for rule in ("unknown method", "is longer than l=", "must be an integer of at least"):
        assert source.count(rule) == 1, rule
