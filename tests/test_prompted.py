"""PromptedModel: PT, DePT, ADePT and EPT in front of minidept's T5, GPT-2 and Llama.

Tiny random backbones (width 32, 2 layers, vocab 128) written by transformers
and loaded with `minidept.load_model`. Sizes in every test: l = 20, m = 4,
s = max_length = 16, which gives r = 10 (DePT), 7 (ADePT), 2 (EPT) at d = 32.
Each invariant is paired with a check that it is not vacuous (the update is
made non-zero and the outputs do change). The decoder-only models (GPT-2, Llama)
run the prompt once per batch; their reference is `[P ; E'(x)]` as one sequence
per row, built in the test.
"""

import warnings

import pytest
import torch
from conftest import make_hf_gpt2, make_hf_llama, make_hf_t5
from hypothesis import given, settings
from hypothesis import strategies as st

import minidept
import minidept.io.adapters
from minidept.methods import PromptConfig
from minidept.prompted import PromptedModel

L_VANILLA, M, S = 20, 4, 16
METHODS = ["pt", "dept", "adept", "ept"]
KINDS = ["t5", "gpt2", "llama"]
DECODERS = ["gpt2", "llama"]   # decoder-only: GPT-2, and Llama with grouped-query attention (2 key/value heads)
VOCAB = 128
GPT2_EOS = 127


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    make_hf_t5(root / "t5")
    make_hf_gpt2(root / "gpt2")
    make_hf_llama(root / "llama", max_position_embeddings=64)
    return {kind: root / kind for kind in KINDS}


@pytest.fixture(scope="module")
def backbones(folders):
    return {kind: minidept.load_model(folder) for kind, folder in folders.items()}


def config(method, **overrides):
    values = dict(l=M, init="vocab") if method == "pt" else dict(l=L_VANILLA, m=M)
    values.update(max_length=S, **overrides)
    return PromptConfig(method, **values)


def build(backbone, method, **overrides) -> PromptedModel:
    return PromptedModel(backbone, config(method, **overrides)).eval()


@torch.no_grad()
def perturb(model: PromptedModel, seed: int = 1) -> PromptedModel:
    """Give every zero-initialised tensor (B, b1, W2, b2, V, W_g) non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.adapter_state_dict().items():
        if name != "prompt.P":
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def batch(lengths, pad_to=None, seed=0, low=2):
    """Right-padded random ids (pad id 0) and the mask."""
    generator = torch.Generator().manual_seed(seed)
    T = pad_to or max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(low, VOCAB - 1, (n,), generator=generator)
        mask[row, :n] = 1
    return ids, mask


DECODER_IDS = torch.tensor([[0, 5, 9, 17], [0, 3, 3, 40], [0, 60, 2, 8]])


@torch.no_grad()
def logits(model, ids, mask=None, rows=None):
    """No-label forward; T5 rows get decoder inputs DECODER_IDS[rows] (default the first B)."""
    if model.backbone.model_type == "t5":
        rows = slice(0, ids.shape[0]) if rows is None else rows
        return model(ids, mask, decoder_input_ids=DECODER_IDS[rows])
    return model(ids, mask)


def real_positions(model, out, lengths):
    """Per row, the logits that belong to real tokens: T5's decoder logits, a decoder-only model's first n."""
    if model.backbone.model_type == "t5":
        return [out[row] for row in range(len(lengths))]
    return [out[row, :n] for row, n in enumerate(lengths)]


def max_diff(a, b):
    return (a - b).abs().max().item()


def pieces(model, ids, mask=None):
    """(P, E'(x), [1..1 ; mask]): the prompt, the embedded text and the full mask, as `forward` joins them."""
    ids, mask = model.check_inputs(ids, mask)
    P, E = model.input_prompt(), model.embed(ids)
    return P, E, torch.cat([mask.new_ones(ids.shape[0], P.shape[0]), mask], dim=1)


def one_sequence_per_row(model, ids, mask=None):
    """Decoder-only reference: `[P ; E'(x)]` of each row as one sequence through the backbone, positions
    0..m+T-1, hidden states of every position (B, m + T, d). No prompt run shared by the batch."""
    P, text, full_mask = pieces(model, ids, mask)
    (B, T, _), m = text.shape, P.shape[0]
    embeds = torch.cat([P.to(text.dtype).expand(B, -1, -1), text], dim=1)
    positions = torch.arange(m + T).expand(B, m + T)
    hidden, _ = model.backbone.hidden_states(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions)
    return hidden


def reference_logits(model, ids, mask=None):
    """Decoder-only reference logits of the text positions (B, T, V), as `model(ids, mask)` returns them."""
    with torch.no_grad():
        return model.backbone.lm_logits(one_sequence_per_row(model, ids, mask)[:, model.config.m:])


def reference_loss(model, ids, mask, labels):
    """Decoder-only reference loss: every position's logits of `[P ; E'(x)]`, labels -100 on the prompt and the
    pads, shifted by one (position t predicts token t + 1)."""
    B, m = ids.shape[0], model.config.m
    full = model.backbone.lm_logits(one_sequence_per_row(model, ids, mask))
    full_labels = torch.cat([torch.full((B, m), -100), labels.masked_fill(mask == 0, -100)], dim=1)
    return torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), full_labels[:, 1:].flatten(),
                                             ignore_index=-100)


# --------------------------------------------------------------------------- #
# The class of the backbone's family, and the one join
# --------------------------------------------------------------------------- #

def test_the_backbone_sets_pad_and_eos(backbones):
    t5, gpt2 = build(backbones["t5"], "dept"), build(backbones["gpt2"], "dept")
    assert (t5.eos_id, t5.pad_id) == (1, 0)                        # T5: </s> and <pad>
    assert (gpt2.eos_id, gpt2.pad_id) == (GPT2_EOS, GPT2_EOS)     # GPT-2 has no pad token: pad = eos
    llama = build(backbones["llama"], "dept")
    assert (llama.eos_id, llama.pad_id) == (127, 0)   # Llama 2 pads with 0
    with pytest.raises(TypeError, match="PromptedModel needs a minidept backbone.*got Linear"):
        PromptedModel(torch.nn.Linear(2, 2), config("pt"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_prompt_and_embedded_text(backbones, kind, method):
    model = perturb(build(backbones[kind], method))
    ids, mask = batch([6, 9, 4])
    with torch.no_grad():
        P, text, full_mask = pieces(model, ids, mask)
        again = pieces(model, ids)                                    # no mask: every position real
    assert P.shape == (M, 32) and text.shape == (3, 9, 32) and full_mask.shape == (3, M + 9)
    assert full_mask[:, :M].eq(1).all() and torch.equal(full_mask[:, M:], mask)
    assert torch.equal(again[0], P) and torch.equal(again[1], text) and again[2].eq(1).all()
    if method in ("pt", "dept", "adept"):
        assert torch.equal(P, model.prompt.P)                      # P, or P_s
    else:
        assert not torch.equal(P, model.prompt.P)                  # EPT: P_r from the perturbed fusion and projection
    embedded = model.backbone.get_input_embeddings()(ids)
    assert torch.equal(text, embedded) == (method == "pt")          # only PT leaves E(x) unchanged


# --------------------------------------------------------------------------- #
# Zero initialisation: a fresh DePT / ADePT / EPT is PT with the same P_s
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["dept", "adept", "ept"])
def test_fresh_method_equals_pt_with_same_short_prompt(backbones, kind, method):
    model = build(backbones[kind], method)
    pt = build(backbones[kind], "pt")
    with torch.no_grad():
        pt.prompt.P.copy_(model.prompt.P)
    assert model.prompt.P.abs().min() > 0                          # a real, non-zero P_s
    ids, mask = batch([6, 9, 4])
    fresh, reference = logits(model, ids, mask), logits(pt, ids, mask)
    assert torch.equal(fresh, reference), f"max abs diff {max_diff(fresh, reference)}"
    perturb(model)
    assert max_diff(logits(model, ids, mask), reference) > 1e-3   # the update is live


# --------------------------------------------------------------------------- #
# DePT's offset depends only on the position, ADePT's only on the token
# --------------------------------------------------------------------------- #

def offsets(model, ids):
    """E'(x) - E(x): what the method adds to each input embedding."""
    with torch.no_grad():
        return pieces(model, ids)[1] - model.backbone.get_input_embeddings()(ids)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_dept_offset_depends_only_on_position(backbones, kind, data):
    model = perturb(build(backbones[kind], "dept"))
    n = data.draw(st.integers(2, S))
    ids = torch.tensor([data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n))])
    other = torch.tensor([data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n))])
    permuted = ids[:, torch.tensor(data.draw(st.permutations(range(n))))]
    base = offsets(model, ids)
    assert torch.allclose(offsets(model, other), base, atol=1e-6)
    assert torch.allclose(offsets(model, permuted), base, atol=1e-6)
    assert torch.allclose(base[0], model.offset.matrix()[:n], atol=1e-6)
    assert (base[0, 0] - base[0, 1]).abs().max() > 1e-4           # rows differ: it does depend on position


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_adept_offset_depends_only_on_token(backbones, kind, data):
    model = perturb(build(backbones[kind], "adept"))
    n = data.draw(st.integers(2, S))
    ids = torch.tensor([data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n, unique=True))])
    order = torch.tensor(data.draw(st.permutations(range(n))))
    base = offsets(model, ids)
    assert torch.allclose(offsets(model, ids[:, order]), base[:, order], atol=1e-6)
    repeated = ids[:, :1].expand(1, n)                             # one token at every position
    same = offsets(model, repeated)
    assert torch.allclose(same, same[:, :1].expand_as(same), atol=1e-6)
    assert (base[0, 0] - base[0, 1]).abs().max() > 1e-4           # different tokens, different offsets


# --------------------------------------------------------------------------- #
# Padding
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_pad_tokens_do_not_change_real_logits(backbones, kind, method):
    model = perturb(build(backbones[kind], method))
    lengths = [5, 9, 12]
    short, short_mask = batch(lengths)
    long, long_mask = batch(lengths, pad_to=S)
    padded_short = real_positions(model, logits(model, short, short_mask), lengths)
    padded_long = real_positions(model, logits(model, long, long_mask), lengths)
    for row, n in enumerate(lengths):
        alone = real_positions(model, logits(model, short[row:row + 1, :n], rows=[row]), [n])[0]
        assert torch.allclose(padded_short[row], alone, atol=1e-5), max_diff(padded_short[row], alone)
        assert torch.allclose(padded_long[row], alone, atol=1e-5), max_diff(padded_long[row], alone)
    if kind == "t5":  # the mask is what makes this hold: unmasked pads do change the outputs
        unmasked = logits(model, long, torch.ones_like(long_mask))
        assert max_diff(unmasked[0], padded_long[0]) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_dept_dynamic_padding_equals_padding_to_s(backbones, kind):
    """minidept slices (A @ B)[:L] for a batch of length L; the official code pads every input to s."""
    model = perturb(build(backbones[kind], "dept"))
    lengths = [3, 7, 10]
    dynamic = real_positions(model, logits(model, *batch(lengths)), lengths)
    to_s = real_positions(model, logits(model, *batch(lengths, pad_to=S)), lengths)
    for a, b in zip(dynamic, to_s):
        assert torch.allclose(a, b, atol=1e-5), max_diff(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_longer_than_s_are_truncated_with_a_counted_warning(backbones, kind):
    model = perturb(build(backbones[kind], "dept"))
    ids, mask = batch([S + 4, 5], seed=3)
    with pytest.warns(UserWarning, match=r"1 input\(s\) longer than max_length=16 tokens truncated \(1 so far\)"):
        cut = logits(model, ids, mask)
    assert model.truncated_inputs == 1
    assert torch.equal(cut, logits(model, ids[:, :S], mask[:, :S]))
    padded_only, padded_mask = batch([S, 5], pad_to=S + 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # only pads beyond s: nothing to warn about
        logits(model, padded_only, padded_mask)
    strict = build(backbones[kind], "dept", overflow="error")
    with pytest.raises(ValueError, match="longer than max_length=16"):
        logits(strict, ids, mask)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_is_refused(backbones, kind):
    model = build(backbones[kind], "dept")
    ids, mask = batch([4, 6])
    with pytest.raises(ValueError, match="right-padded"):
        logits(model, ids, mask.flip(1))


# --------------------------------------------------------------------------- #
# Zero-length prompt, peft parity
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", KINDS)
def test_zero_length_prompt_equals_bare_backbone(backbones, kind):
    backbone = backbones[kind]
    ids, mask = batch([6, 9, 4])
    with torch.no_grad():
        if kind == "t5":
            bare = backbone(ids, mask, decoder_input_ids=DECODER_IDS)
        else:
            bare = backbone(ids, mask)
    for model in (build(backbone, "pt", l=0), build(backbone, "dept", m=0)):
        out = logits(model, ids, mask)
        assert torch.equal(out, bare), f"{model.config.method}: max abs diff {max_diff(out, bare)}"
    dept = perturb(build(backbone, "dept", m=0))
    assert max_diff(logits(dept, ids, mask), bare) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_pt_equals_peft_prompt_tuning(folders, kind):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    make = {"t5": make_hf_t5, "gpt2": make_hf_gpt2, "llama": make_hf_llama}[kind]
    hf = make(folders[kind].parent / f"peft_{kind}")
    ours = build(minidept.load_model(folders[kind].parent / f"peft_{kind}"), "pt", l=7)
    task = TaskType.SEQ_2_SEQ_LM if kind == "t5" else TaskType.CAUSAL_LM
    peft_model = get_peft_model(hf, PromptTuningConfig(task_type=task, num_virtual_tokens=7,
                                                       num_transformer_submodules=1)).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(ours.prompt.P)
    ids, mask = batch([6, 9, 4])
    with torch.no_grad():
        if kind == "t5":
            reference = peft_model(input_ids=ids, attention_mask=mask, decoder_input_ids=DECODER_IDS).logits
        else:
            reference = peft_model(input_ids=ids, attention_mask=mask).logits[:, 7:]   # drop the prompt positions
    out = logits(ours, ids, mask)
    diff = max_diff(out, reference)
    print(f"PT vs peft ({kind}): max abs diff {diff:.3g}")
    assert torch.allclose(out, reference, atol=1e-5), f"max abs diff {diff}"


# --------------------------------------------------------------------------- #
# Training: loss only where labels are, gradients only into the method
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_loss_matches_full_logits_and_gradients_reach_only_the_method(backbones, kind, method):
    model = perturb(build(backbones[kind], method))  # eval mode: no dropout, so the two losses can match
    ids, mask = batch([6, 9, 4])
    if kind == "t5":
        labels = torch.tensor([[5, 9, 1, -100], [3, 3, 40, 1], [60, 1, -100, -100]])
        loss = model(ids, mask, labels=labels)
        with torch.no_grad():
            full = model(ids, mask, decoder_input_ids=model.backbone.shift_right(labels))
        reference = torch.nn.functional.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=-100)
    else:
        labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.4, -100)
        loss = model(ids, mask, labels=labels)
        with torch.no_grad():
            reference = reference_loss(model, ids, mask, labels)   # [P ; E'(x)] one sequence per row
    assert torch.allclose(loss, reference, atol=1e-5), (loss.item(), reference.item())
    model.zero_grad()
    loss.backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.adapter_state_dict().values()}
    for name, p in model.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in model.adapter_state_dict().items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    groups = model.param_groups(lr_prompt=0.3, lr_lowrank=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("prompt", 0.3), ("lowrank", 1e-4)]
    ids_by_group = [{id(p) for p in g["params"]} for g in groups]
    assert ids_by_group[0] | ids_by_group[1] == trainable and not ids_by_group[0] & ids_by_group[1]
    assert ids_by_group[0] == {id(model.prompt.P)}
    # one optimiser step changes the method and nothing else
    before = {name: p.clone() for name, p in model.backbone.state_dict().items()}
    prompt_before = model.prompt.P.detach().clone()
    torch.optim.AdamW(groups).step()
    assert all(torch.equal(p, before[name]) for name, p in model.backbone.state_dict().items())
    assert not torch.equal(model.prompt.P, prompt_before)


@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_only_labels_on_pads_and_prompt_never_count(backbones, kind):
    model = perturb(build(backbones[kind], "dept"))
    ids, mask = batch([6, 9, 4])
    with torch.no_grad():
        clean = model(ids, mask, labels=ids.masked_fill(mask == 0, -100))
        dirty = model(ids, mask, labels=ids)                       # labels on pad positions too
    assert torch.equal(clean, dirty)


def test_backbone_dtype_is_kept_and_method_stays_float32(folders):
    backbone = minidept.load_model(folders["gpt2"], dtype=torch.bfloat16)
    model = perturb(build(backbone, "dept")).train()
    ids, mask = batch([6, 9])
    loss = model(ids, mask, labels=ids)
    loss.backward()
    assert backbone.wte.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.grad is not None for p in model.trainable_parameters())


# --------------------------------------------------------------------------- #
# Inference: ADePT folding, the GPT-2 prompt run once per batch, generation
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", KINDS)
def test_adept_folded_equals_unfolded(backbones, kind):
    model = perturb(build(backbones[kind], "adept"))
    ids, mask = batch([6, 9, 4])
    unfolded = logits(model, ids, mask)
    assert model.folded is None
    model.fold()
    assert model.folded.shape == (VOCAB, 32)                       # the table: E(x) + offset(E(x)) per token
    folded = logits(model, ids, mask)
    assert torch.allclose(folded, unfolded, atol=1e-5), max_diff(folded, unfolded)
    with torch.no_grad():
        model.offset.W2.mul_(2)                                    # e.g. an optimiser step
    assert torch.equal(logits(model, ids, mask), folded)           # inference reads the table (fold() again!)
    with torch.enable_grad():                                      # training never does: it follows W2
        live = model(ids, mask, decoder_input_ids=DECODER_IDS) if kind == "t5" else model(ids, mask)
    assert max_diff(live.detach(), folded) > 1e-3
    model.fold()
    refolded = logits(model, ids, mask)
    assert max_diff(refolded, folded) > 1e-3                       # the new table has the new W2
    assert torch.allclose(refolded, live.detach(), atol=1e-5), max_diff(refolded, live.detach())
    assert torch.allclose(refolded, logits(model.unfold(), ids, mask), atol=1e-5)
    assert model.folded is None
    with pytest.raises(ValueError, match="fold\\(\\) is for ADePT"):
        build(backbones[kind], "dept").fold()


@pytest.mark.parametrize("kind", KINDS)
def test_load_adapter_refolds(backbones, kind, tmp_path):
    source = perturb(build(backbones[kind], "adept"), seed=3)
    minidept.save_adapter(source, tmp_path / "a.safetensors")
    target = build(backbones[kind], "adept").fold()
    stale = target.folded.clone()
    ids, mask = batch([6, 9, 4])
    minidept.io.adapters.load_adapter_into(target, tmp_path / "a.safetensors")
    assert not torch.equal(target.folded, stale)
    assert torch.allclose(target.folded, source.fold().folded, atol=1e-6)
    assert torch.allclose(logits(target, ids, mask), logits(source.unfold(), ids, mask), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_only_prompt_run_once_per_batch_equals_one_sequence_per_row(backbones, kind, method):
    model = perturb(build(backbones[kind], method))
    ids, mask = batch([6, 9, 4])
    out, reference = logits(model, ids, mask), reference_logits(model, ids, mask)
    assert torch.allclose(out, reference, atol=1e-5), max_diff(out, reference)
    with torch.no_grad():
        past, prompt_last = model.run_prompt(pieces(model, ids, mask)[0], 3)
        hidden = one_sequence_per_row(model, ids, mask)
    heads = 2 if kind == "llama" else 4                            # Llama: 2 key/value heads for 4 query heads
    assert len(past) == 2 and past[0][0].shape == (3, heads, M, 8)  # keys and values of m positions, per row
    assert torch.allclose(prompt_last, hidden[:, M - 1:M], atol=1e-5)   # the prompt's last state
    # nothing is kept between calls: a change of the parameters (the prompt, in place) shows at once
    with torch.no_grad():
        model.prompt.P.add_(torch.randn(model.prompt.P.shape, generator=torch.Generator().manual_seed(5)))
    changed = logits(model, ids, mask)
    assert max_diff(changed, out) > 1e-3
    assert torch.allclose(changed, reference_logits(model, ids, mask), atol=1e-5)
    assert model.run_prompt(model.prompt.P[:0], 3) == (None, None)  # m = 0: no prompt to run


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("first_labelled", [False, True])
@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_only_shared_prompt_training_equals_one_sequence_per_row(backbones, kind, method, first_labelled):
    """Running the prompt once for the batch gives the loss and gradients of [P ; E'(x)] per row
    (dropout off; with it on, the rows would share the prompt's dropout mask)."""
    model = perturb(build(backbones[kind], method))
    ids, mask = batch([6, 9, 4])
    labels = ids.clone()
    labels[:, :2] = -100                      # a prefix without labels, as in a task's input
    if first_labelled:                        # the first text token is predicted by the prompt's last state
        labels[:, 0] = ids[:, 0]
    results = []
    for loss_of in (lambda: model(ids, mask, labels=labels), lambda: reference_loss(model, ids, mask, labels)):
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (shared, shared_grads), (reference, reference_grads) = results
    assert torch.allclose(shared, reference, atol=1e-6), (shared.item(), reference.item())
    assert shared_grads.keys() == reference_grads.keys()
    for name in reference_grads:
        assert reference_grads[name].abs().max() > 0, name              # every tensor gets a gradient
        assert torch.allclose(shared_grads[name], reference_grads[name], atol=1e-6), \
            (name, max_diff(shared_grads[name], reference_grads[name]))


@torch.no_grad()
def naive_greedy(model, ids, n_new):
    """Reference decoding: the full no-cache forward on the growing sequence, one token at a time
    (decoder-only: `[P ; E'(x)]` as one sequence, the prompt not run apart)."""
    if model.backbone.model_type == "t5":
        out = torch.zeros(1, 1, dtype=torch.long)
        for _ in range(n_new):
            token = model(ids, decoder_input_ids=out)[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, token], dim=1)
            if token.item() == model.backbone.config.eos_token_id:
                break
        return out[0, 1:].tolist()
    new = []
    for _ in range(n_new):
        token = reference_logits(model, ids)[:, -1].argmax(-1, keepdim=True)
        new.append(token.item())
        ids = torch.cat([ids, token], dim=1)
        if token.item() == model.backbone.config.eos_token_id:
            break
    return new


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_generate_equals_naive_greedy(backbones, kind, method):
    """Generated tokens get the method's offset too (DePT: their position's row, ADePT: their token's)."""
    model = perturb(build(backbones[kind], method))
    lengths, n_new = [5, 9, 12], 4
    ids, mask = batch(lengths)
    generated = model.generate(ids, mask, max_new_tokens=n_new)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=n_new), generated)   # nothing kept between calls
    for row, n in enumerate(lengths):
        expected = naive_greedy(model, ids[row:row + 1, :n], n_new)
        assert generated[row, :len(expected)].tolist() == expected, (row, generated[row].tolist(), expected)


@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_only_pt_generate_equals_backbone_generate(backbones, kind):
    model = perturb(build(backbones[kind], "pt"))
    ids, mask = batch([5, 9, 12])
    with torch.no_grad():
        P, text, full_mask = pieces(model, ids, mask)
    embeds = torch.cat([P.expand(3, -1, -1), text], dim=1)
    expected = model.backbone.generate(inputs_embeds=embeds, attention_mask=full_mask, max_new_tokens=4)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=4), expected)


@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_only_generate_past_s_and_past_the_context(backbones, kind):
    model = perturb(build(backbones[kind], "dept"))
    ids, mask = batch([14, 3])
    out = model.generate(ids, mask, max_new_tokens=6)          # row 0 runs past s = 16: no offset there
    assert out.shape == (2, 6)
    update = model.offset
    E = torch.zeros(1, 2, 32)
    beyond = update(E, positions=torch.tensor([[15, 16]]))
    assert torch.equal(beyond[0, 1], torch.zeros(32)) and beyond[0, 0].abs().max() > 0
    assert model.generate(ids, mask, max_new_tokens=47).shape[0] == 2   # 4 + 14 + 47 - 1 = 64 positions fit
    with pytest.raises(ValueError, match="goes past the model's context of 64"):
        model.generate(ids, mask, max_new_tokens=48)            # 4 + 14 + 48 - 1 > 64


def test_param_groups_refuse_a_trainable_tensor_without_a_group(backbones):
    model = build(backbones["t5"], "ept")
    groups = model.param_groups(0.3, 1e-4)
    assert {id(p) for p in groups[1]["params"]} == {id(model.offset.A), id(model.offset.B), id(model.projection.U),
                                                     id(model.projection.V), id(model.projection.W_g)}
    model.extra = torch.nn.Linear(2, 2)                              # e.g. a module someone adds later
    with pytest.raises(RuntimeError, match="partition"):
        model.param_groups(0.3, 1e-4)
