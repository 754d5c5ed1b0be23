"""Parameter budgets (methods.md sections 1-4) and up-front validation of method hyper-parameters.

The tables are checked twice: by formula (`budget`, `parameter_count`) and by
counting the trainable tensors of a real `PromptedModel` at the paper's widths.
"""

import pytest
import torch
from conftest import make_hf_gpt2, make_hf_t5
from hypothesis import given, settings
from hypothesis import strategies as st

import minidept
from minidept.prompts import PromptConfig, PromptedModel, budget, parameter_count

# (m, r, trainable parameters) from methods.md, l = 100, s = 256
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
    assert (pt.m, pt.r, pt.n_prompt) == (100, 0, 100)
    assert PromptConfig("dept", m=40, r=45).resolve(768).r == 45  # an explicit r is kept
    with pytest.warns(UserWarning, match="more than PT's"):
        PromptConfig("dept", m=60, r=31).resolve(768)
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
    with pytest.raises(TypeError, match="minidept T5 or GPT2"):
        PromptedModel(torch.nn.Linear(2, 2), PromptConfig("pt", l=4))
