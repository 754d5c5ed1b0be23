# %% [markdown]
# # Tutorial 3: prompt tuning (PT)
#
# Prompt tuning (Lester et al., 2021) adapts a *frozen* language model to a task
# by training only a few vectors put in front of the input:
#
# ```
# input to the frozen model = [P ; E(x)]        P: l x d, trainable;  E(x): the frozen word embeddings
# ```
#
# `l` is the prompt length (100 in the DePT paper) and `d` the model width. No
# weight of the model changes; a task is `l * d` numbers (76,800 for T5-base).
# DePT, ADePT and EPT (tutorials 4-6) all start from this.
#
# In this tutorial we put a soft prompt on a T5 and on a GPT-2 with
# `minidept.prompted.PromptedModel`, rebuild its input by hand to see exactly
# where the prompt enters, check what trains and what stays frozen, train a
# prompt and watch it learn a task, and count parameters.

# %%
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

import minidept
from minidept.data.load import collate
from minidept.data.tasks import format_example
from minidept.io.checkpoint import save_pretrained
from minidept.loop import Hooks, train_loop
from minidept.methods import DEFAULT_INIT_TEXT, PromptConfig
from minidept.models.gpt2 import GPT2, GPT2Config
from minidept.models.t5 import T5, T5Config
from minidept.prompted import PromptedModel

from tutorial_setup import (FAST, accuracy, batch_source, encode, plt, pocket_t5, save,  # shared set-up
                            sentiment_examples, sentiment_splits, tiny_backbone, tokenizer_for)

torch.manual_seed(0)
torch.set_num_threads(1)                                   # small models run fastest on one thread


# %% [markdown]
# ## Two backbones and a few examples
#
# The T5 is the **pocket T5** (`--model pocket-t5`, `docs/pocket.md`): a small
# T5 (width `d = 256`, 3 encoder and 2 decoder blocks, a 4,096-token vocabulary)
# that minidept pretrained from scratch on a CPU and ships in the package. It
# learned sentiment among other things, but always behind a task prefix
# (`sst2 sentence: ...` -> `1`). We give it the text *without* the prefix, so a
# prompt has something to do: take the prefix's place. The GPT-2 here is a
# tiny random one of width `d = 64`: good for the mechanics, useless for
# learning. minidept also ships a pretrained decoder made by the same recipe,
# `--model pocket-gpt2` (`docs/pocket.md`), on which PT learns SST-2 too.
#
# With `MINIDEPT_DATA` we take three SST-2 validation sentences and GPT-2's real
# tokenizer (the tiny GPT-2 then has the real vocabulary). Without it, the
# embedded demo: the synthetic sentiment task (`--task demo`,
# `minidept/data/tasks.py`) and a byte tokenizer for GPT-2 (`--model demo-gpt2`,
# `minidept/io/backbones.py`). The pocket T5 always brings its own tokenizer.

# %%
task, examples = sentiment_examples("validation", 3)       # SST-2 with MINIDEPT_DATA, else the demo task
t5, t5_tokenizer = pocket_t5()                             # pretrained, frozen, width 256
gpt2 = tiny_backbone("gpt2")                               # tiny and random, width 64
tokenizers = {"t5": t5_tokenizer, "gpt2": tokenizer_for("gpt2")}
print(f"T5: the pocket T5, d = {t5.d_model}, {t5.config.num_layers} + {t5.config.num_decoder_layers} blocks, "
      f"{sum(p.numel() for p in t5.parameters()):,} parameters, {t5_tokenizer.get_vocab_size():,} tokens")
print(f"GPT-2: tiny and random, d = {gpt2.d_model}, {gpt2.config.n_layer} blocks")

for example in examples:
    print("(source, target):", format_example(task, example))

# %% [markdown]
# You should see the two backbones, then three `(source, target)` pairs: the
# text-to-text casting of the DePT code, no task prefix, the label id as the
# target string. On the demo:
#
# ```output demo
# T5: the pocket T5, d = 256, 3 + 2 blocks, 4,853,504 parameters, 4,096 tokens
# GPT-2: tiny and random, d = 64, 2 blocks
# (source, target): ('sentence: the acting was fun', '1')
# (source, target): ('sentence: honestly , it was silly', '0')
# (source, target): ('sentence: this movie is delightful', '1')
# ```
#
# ## PT on T5: the prompt goes in front of the encoder input
#
# `PromptConfig("pt", l=100)` describes the method; `PromptedModel` freezes the
# backbone (`requires_grad=False` on every weight) and owns the prompt. We keep
# the inputs at most `max_length = 128` tokens.

# %%
pt_t5 = PromptedModel(t5, PromptConfig("pt", l=100, max_length=128)).eval()
trainable = {name: tuple(p.shape) for name, p in pt_t5.named_parameters() if p.requires_grad}
frozen = sum(p.numel() for p in pt_t5.backbone.parameters())
print("trainable:", trainable)
print(f"trainable numbers: {sum(p.numel() for p in pt_t5.trainable_parameters()):,} | "
      f"frozen backbone: {frozen:,} | any backbone weight trainable: "
      f"{any(p.requires_grad for p in pt_t5.backbone.parameters())}")

# %% [markdown]
# You should see 25,600 trainable numbers (`l * d = 100 * 256`) and the frozen
# pocket T5, 190 times larger:
#
# ```output
# trainable: {'prompt.P': (100, 256)}
# trainable numbers: 25,600 | frozen backbone: 4,853,504 | any backbone weight trainable: False
# ```
#
# The prompt starts as real word vectors: PT's paper initialises it from rows
# of the frozen embedding table, sampled among the 5,000 most frequent tokens
# (minidept takes the first 5,000 ids, minus special tokens; the pocket T5 has
# only 4,096, so here the pool is its whole vocabulary but `<pad>`, `</s>` and
# `<unk>`). That is `PromptConfig`'s default, since a config has no tokenizer.
# The official DePT runs, and so `python -m minidept.train` by default, use
# `init="text"`: the embeddings of "Classify this text is postive or not:"
# (sic) tokenised with the end-of-sequence token (11 ids with T5's tokenizer,
# 12 with the pocket T5's), cycled to `l` rows (`init_text_ids=...`).
# `init="random"` is the third choice. We train with the text init below.

# %%
table = t5.get_input_embeddings().weight
P = pt_t5.prompt.P
rows = [int(torch.nonzero((table == row).all(dim=1))[0]) for row in P.detach()]
print("the prompt's rows are embedding rows of token ids:", rows[:10], "...")
print("as words:", [t5_tokenizer.id_to_token(i) for i in rows[:10]])
print("none is <pad> (0), </s> (1) or <unk> (2):", all(i > 2 for i in rows))

# %% [markdown]
# You should see ten token ids, the same pieces as words (`▁` marks the start
# of a word; a random draw, so a mixed bag), and `True`:
#
# ```output
# the prompt's rows are embedding rows of token ids: [3264, 1128, 1941, 3187, 1669, 1057, 2163, 844, 1901, 2504] ...
# as words: ['▁Chinese', '▁script', '▁releas', '▁rhyth', 'pped', '-p', '▁nat', '▁bro', 'uine', 'pping']
# none is <pad> (0), </s> (1) or <unk> (2): True
# ```
#
# Now the forward pass written out: embed the text with the frozen table, put
# `P` in front, extend the attention mask with `l` ones, and run the frozen
# encoder and decoder. The decoder and the labels do not change at all. This
# must give exactly what `PromptedModel` gives.

# %%
t5_rows = encode(task, examples, t5_tokenizer, t5, max_length=128)    # as `python -m minidept.train` does
t5_batch = collate(t5_rows, pad_id=t5.config.pad_token_id)   # right-padded to the longest row
ids, mask, labels = t5_batch["input_ids"], t5_batch["attention_mask"], t5_batch["labels"]
B, l = ids.shape[0], pt_t5.config.l
with torch.no_grad():
    embeds = torch.cat([P.expand(B, -1, -1), t5.shared(ids)], dim=1)        # [P ; E(x)]   (B, l + T, d)
    prompt_mask = torch.cat([torch.ones(B, l, dtype=mask.dtype), mask], dim=1)  # l ones in front
    encoder_hidden = t5.encode(inputs_embeds=embeds, attention_mask=prompt_mask)
    decoder_input_ids = t5.shift_right(labels)                               # the decoder is untouched
    hidden, _ = t5.decode(decoder_input_ids, encoder_hidden, attention_mask=prompt_mask)
    by_hand = t5.lm_logits(hidden)
    ours = pt_t5(ids, mask, decoder_input_ids=decoder_input_ids)
print("text", tuple(ids.shape), "-> encoder input", tuple(embeds.shape), "-> logits", tuple(ours.shape))
print("by hand == PromptedModel:", torch.equal(by_hand, ours))

# %% [markdown]
# You should see the encoder input 100 positions longer than the text (the
# pocket T5's pieces are whole words or parts of words, so a demo sentence is
# 8 tokens; the target "1" is 3: the word-start piece `▁`, `1` and `</s>`):
#
# ```output demo
# text (3, 8) -> encoder input (3, 108, 256) -> logits (3, 3, 4096)
# by hand == PromptedModel: True
# ```
#
# or with the three SST-2 sentences:
#
# ```output data
# text (3, 18) -> encoder input (3, 118, 256) -> logits (3, 3, 4096)
# ```
#
# Note the cost: SST-2 inputs are 17 T5 tokens long on average in the
# training set and 32 in the test set (with `sentence:` and `</s>`, T5's own
# tokenizer), so PT's 100 prompt tokens make every encoder input 4 to 7 times
# longer. That is the cost DePT attacks (tutorial 4).
#
# ## PT on GPT-2: prompt first, then the text
#
# A decoder-only model has one sequence. minidept feeds `[P ; E(x) ; pad]`:
# prompt positions `0 .. l-1`, text positions `l ..`, pads at the **right** end
# (so every real token keeps a fixed position), the mask extended by `l` ones,
# and labels `-100` (no loss) on the prompt. The text is
# `"{source} Label : {target}<|endoftext|>"` and the loss is on the target only.

# %%
pt_gpt2 = PromptedModel(gpt2, PromptConfig("pt", l=100, max_length=128)).eval()
gpt2_rows = encode(task, examples, tokenizers["gpt2"], gpt2, max_length=128)
gpt2_batch = collate(gpt2_rows, pad_id=gpt2.config.eos_token_id)   # GPT-2 has no pad token: pads are masked
ids, mask = gpt2_batch["input_ids"], gpt2_batch["attention_mask"]
B, T = ids.shape
with torch.no_grad():
    P = pt_gpt2.prompt.P
    embeds = torch.cat([P.expand(B, -1, -1), gpt2.wte(ids)], dim=1)            # [P ; E(x) ; pad]
    full_mask = torch.cat([torch.ones(B, l, dtype=mask.dtype), mask], dim=1)
    positions = torch.arange(l + T).expand(B, -1)                            # prompt 0..l-1, text l..
    hidden, _ = gpt2.hidden_states(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions)
    by_hand = gpt2.lm_logits(hidden[:, l:])                                  # the text's own positions
    ours = pt_gpt2(ids, mask)
print(tokenizers["gpt2"].decode(ids[0][mask[0].bool()].tolist()))
print("labels of row 0 (-100: no loss):", gpt2_batch["labels"][0][mask[0].bool()].tolist()[-6:], "(last 6)")
print(f"max |by hand - PromptedModel|: {(by_hand - ours).abs().max().item():.1e}")

# %% [markdown]
# You should see row 0 as text ending in the label (`Label : 1<|endoftext|>`
# with the real tokenizer; the byte tokenizer does not print
# `<|endoftext|>`), labels that are -100 except on the target and
# `<|endoftext|>`, and a difference of about `1e-6` or less:
#
# ```output demo
# sentence: the acting was fun Label : 1
# labels of row 0 (-100: no loss): [-100, -100, -100, -100, 52, 1] (last 6)
# max |by hand - PromptedModel|: ~2.4e-07
# ```
#
# ```output data
# sentence: steals the show  Label : 1<|endoftext|>
# labels of row 0 (-100: no loss): [-100, -100, -100, -100, 16, 50256] (last 6)
# ```
#
# It is not exactly 0 because
# `PromptedModel` does not run the prompt in every row: under causal attention
# the prompt never sees the text, so its keys and values are the same for every
# input. It runs the prompt once (batch 1) and lets the text attend to its keys
# and values (tutorial 2's cache), which saves `B * l` positions of work and
# memory (`DecoderOnlyPrompted.run_prompt` in `minidept/prompted.py`).
# In training the loss and gradients are those of `[P ; E(x)]` row by row
# (tested); the one difference is that the rows of a batch share the prompt's
# dropout mask.
#
# A picture of the two inputs for this batch:

# %%
if plt:
    from matplotlib.colors import ListedColormap
    kinds = ["prompt P", "source text", "target (loss)", "pad"]
    colours = ListedColormap(["#4C72B0", "#55A868", "#C44E52", "#DDDDDD"])
    t5_map = torch.cat([torch.zeros(B, l), torch.where(t5_batch["attention_mask"].bool(), 1, 3)], dim=1)
    gpt2_labels = gpt2_batch["labels"]
    gpt2_text = torch.where(mask.bool(), torch.where(gpt2_labels != -100, 2, 1), 3)
    gpt2_map = torch.cat([torch.zeros(B, l), gpt2_text], dim=1)
    fig, axes = plt.subplots(2, 1, figsize=(11, 3.6))
    for ax, (title, image) in zip(axes, [("T5 encoder input (the target goes to the decoder)", t5_map),
                                         ("GPT-2 input (prompt positions 0..l-1, text after)", gpt2_map)]):
        ax.imshow(image, cmap=colours, vmin=0, vmax=3, aspect="auto", interpolation="nearest")
        ax.set(title=title, ylabel="example", yticks=range(B))
    axes[1].set_xlabel("position")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(4)]
    fig.legend(handles, kinds, loc="upper right", ncol=4, bbox_to_anchor=(0.98, 1.06))
    fig.tight_layout()
    save(fig, "pt_input_layout.png")

# %% [markdown]
# You should see (in `pt_input_layout.png`) 100 positions of prompt in every row,
# then the text, then grey padding at the right end; in GPT-2 a short red target
# at the end of each text.
#
# ## What trains and what stays frozen
#
# One training step: the loss reaches only `P`. The backbone's weights get no
# gradient at all (they do not require one), and an optimizer step leaves them
# bit for bit as they were.

# %%
pt_t5.train()                                         # dropout on, as in training
before = {name: p.clone() for name, p in t5.named_parameters()}
P_before = pt_t5.prompt.P.detach().clone()
optimizer = torch.optim.AdamW(pt_t5.trainable_parameters(), lr=0.3)
loss = pt_t5(t5_batch["input_ids"], t5_batch["attention_mask"], labels=t5_batch["labels"])
loss.backward()
optimizer.step()
pt_t5.eval()
print(f"loss of the first batch (mean cross-entropy over the target tokens): {loss.item():.3f}")
print("gradient on P:", pt_t5.prompt.P.grad is not None, "| gradients on the backbone:",
      sum(p.grad is not None for p in t5.parameters()))
print("P changed:", not torch.equal(P_before, pt_t5.prompt.P),
      "| backbone unchanged:", all(torch.equal(before[n], p) for n, p in t5.named_parameters()))

# %% [markdown]
# You should see a small loss: the pocket T5 already answers many of these
# sentences right, even behind 100 randomly drawn words, and two of the three
# target tokens (`▁` and `</s>`) are easy (a random model would be about as
# unsure as `log(vocabulary size)`, 8.3 for 4,096 tokens). Then the gradient on
# `P` alone:
#
# ```output demo
# loss of the first batch (mean cross-entropy over the target tokens): 0.215
# gradient on P: True | gradients on the backbone: 0
# P changed: True | backbone unchanged: True
# ```
#
# ```output data
# loss of the first batch (mean cross-entropy over the target tokens): 0.277
# ```
#
# A trained prompt is saved alone: `save_adapter` writes one small
# `.safetensors` file holding only the trainable tensors (and the method's
# settings), `minidept.load_adapter(path, backbone)` puts it back in front
# of the same backbone.

# %%
adapter = Path(tempfile.mkdtemp()) / "pt.safetensors"
minidept.save_adapter(pt_t5, adapter)
again = minidept.load_adapter(adapter, t5)
print(f"adapter file: {adapter.stat().st_size:,} bytes | same prompt: {torch.equal(again.prompt.P, pt_t5.prompt.P)}")

# %% [markdown]
# You should see about 100 kB (25,600 float32 numbers plus a header):
#
# ```output
# adapter file: 102,864 bytes | same prompt: True
# ```
#
# ## Does the prompt learn? Training PT on the pocket T5
#
# All of the above would work just as well on random weights. What a random
# model cannot show is the point of the method: a prompt that *learns* to steer
# a frozen model. So we now train one, the way `python -m minidept.train` does:
#
# - the task: SST-2 with `MINIDEPT_DATA` (split by the official rule: its
#   validation split is 1,000 training sentences, its test split the official
#   dev set), else the demo task (2,000 / 200 / 200 synthetic sentences);
# - the prompt: `l` = the task's length (100 for SST-2, 20 for the demo task),
#   initialised with the official init text (`init="text"`) and seed 42, as the
#   train command builds it;
# - AdamW at the task's prompt rate (0.3), betas (0.9, 0.999), eps 1e-6, no
#   weight decay, as the official runs; batches of 16; the rate rising over the
#   first tenth of the steps, then falling in a line to 0;
# - the loop: `minidept.loop.train_loop`, the one the train command runs
#   (tutorial 4 writes it out). A `Hooks` object is called after every step;
#   ours keeps the loss.
#
# To know what "good" means here we also score the frozen model alone (a
# prompt of length 0), once without and once *with* the task prefix it was
# pretrained with: "sst2 " in front of the source, which is how
# `python -m minidept.pretrain` cast its SST-2 examples (the demo task is cast
# like SST-2, so it gets the same prefix). All scores are greedy answers on the
# validation split (its first 200 examples with `MINIDEPT_FAST=1`), checked
# against the label id, as `python -m minidept.evaluate` scores.

# %%
task, splits = sentiment_splits()                  # SST-2 with MINIDEPT_DATA, else the demo task
steps, n_eval, pad = (60 if FAST else 200), (200 if FAST else None), t5.config.pad_token_id
train_rows = encode(task, splits["train"], t5_tokenizer, t5, task.max_length)
val_rows = encode(task, splits["validation"][:n_eval], t5_tokenizer, t5, task.max_length)


def with_prefix(example):
    return "sst2 " + format_example(task, example)[0]    # "sst2 sentence: ...", the pretraining casting


prefixed_rows = encode(dataclasses.replace(task, source=with_prefix), splits["validation"][:n_eval],
                       t5_tokenizer, t5, task.max_length)
print(f"{task.name}: {len(train_rows):,} training examples, scored on {len(val_rows):,} validation examples")
print("with the prefix, the model reads:", repr(t5_tokenizer.decode(prefixed_rows[0]["input_ids"])))

alone = PromptedModel(t5, PromptConfig("pt", l=0, max_length=task.max_length)).eval()   # no prompt at all
print(f"the frozen model alone, with the prefix 'sst2 ': {accuracy(alone, prefixed_rows, task, t5_tokenizer):5.1f}%")
print(f"the frozen model alone, no prefix:              {accuracy(alone, val_rows, task, t5_tokenizer):5.1f}%")

init_ids = tuple(t5_tokenizer.encode(DEFAULT_INIT_TEXT).ids)                 # the init text's ids, </s> included
pt = PromptedModel(t5, PromptConfig("pt", l=task.l, max_length=task.max_length, init="text",
                                    init_text_ids=init_ids, seed=42)).eval()
before = accuracy(pt, val_rows, task, t5_tokenizer)


class LossLog(Hooks):
    """Called by the loop after every step; keeps the loss."""

    def __init__(self):
        self.losses = []

    def after_step(self, step, loss, grad_norm, seconds, optimizer):
        self.losses.append(loss)


log = LossLog()
optimizer = torch.optim.AdamW(pt.trainable_parameters(), lr=task.lr_prompt, betas=(0.9, 0.999), eps=1e-6,
                              weight_decay=0.0)
start = time.perf_counter()
train_loop(pt, optimizer, batch_source(train_rows, 16, pad, seed=42), max_steps=steps,
           warmup_steps=steps // 10, hooks=log)
seconds = time.perf_counter() - start
pt.eval()
after = accuracy(pt, val_rows, task, t5_tokenizer)
losses = log.losses
print(f"PT, l = {task.l} ({pt.prompt.P.numel():,} numbers), {steps} steps of 16 in {seconds:.0f} s: "
      f"loss {sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f} (first and last 10 steps)")
print(f"PT, validation accuracy: {before:.1f}% with the untrained prompt -> {after:.1f}% after training")

# %% [markdown]
# You should see, on the demo task (the training takes a few seconds on an
# idle machine; `~` marks the seconds, which depend on the machine):
#
# ```output demo fast
# demo: 2,000 training examples, scored on 200 validation examples
# with the prefix, the model reads: 'sst2 sentence: the acting was fun'
# the frozen model alone, with the prefix 'sst2 ':  88.0%
# the frozen model alone, no prefix:               73.5%
# PT, l = 20 (5,120 numbers), 60 steps of 16 in ~13 s: loss 0.125 -> 0.009 (first and last 10 steps)
# PT, validation accuracy: 53.0% with the untrained prompt -> 100.0% after training
# ```
#
# ```output demo full
# demo: 2,000 training examples, scored on 200 validation examples
# with the prefix, the model reads: 'sst2 sentence: the acting was fun'
# the frozen model alone, with the prefix 'sst2 ':  88.0%
# the frozen model alone, no prefix:               73.5%
# PT, l = 20 (5,120 numbers), 200 steps of 16 in ~25 s: loss 0.135 -> 0.005 (first and last 10 steps)
# PT, validation accuracy: 53.0% with the untrained prompt -> 100.0% after training
# ```
#
# and with `MINIDEPT_DATA`, on SST-2:
#
# ```output data fast
# sst2: 66,349 training examples, scored on 200 validation examples
# with the prefix, the model reads: 'sst2 sentence: steals the show '
# the frozen model alone, with the prefix 'sst2 ':  85.0%
# the frozen model alone, no prefix:               83.5%
# PT, l = 100 (25,600 numbers), 60 steps of 16 in ~29 s: loss 0.171 -> 0.090 (first and last 10 steps)
# PT, validation accuracy: 67.0% with the untrained prompt -> 82.0% after training
# ```
#
# ```output data full
# sst2: 66,349 training examples, scored on 1,000 validation examples
# with the prefix, the model reads: 'sst2 sentence: steals the show '
# the frozen model alone, with the prefix 'sst2 ':  86.9%
# the frozen model alone, no prefix:               84.0%
# PT, l = 100 (25,600 numbers), 200 steps of 16 in ~104 s: loss 0.174 -> 0.081 (first and last 10 steps)
# PT, validation accuracy: 68.2% with the untrained prompt -> 85.9% after training
# ```
#
# What we saw:
#
# - **The untrained prompt hurts.** The init text's vectors, repeated to `l`
#   rows, are worse than no prompt at all: 53.0% against 73.5% on the demo,
#   68.2% against 84.0% on SST-2 (67.0% against 83.5% on the first 200). A
#   likely reason (we did not dig further): the model never saw this
#   instruction in pretraining, and it stands where the model learned to
#   expect a task's name.
# - **Training only the prompt fixes that and more.** On the demo task PT
#   reaches 100% within 60 steps, above the model's own score with the prefix
#   (88.0%): the demo's sentences are easy (one sentiment word in a few
#   templates), and the prompt is trained on exactly them. On SST-2 the prompt
#   climbs from 68.2% to 85.9% in 200 steps, above the model without a prefix
#   (84.0%) and just below it with the prefix (86.9%). After 60 steps (the fast
#   run) it is at 82.0%: on real sentences 60 steps are not enough yet.
# - **The prompt selects, it does not teach.** The best it does on SST-2 is
#   what the prefix already gets out of the model. A prompt in the prefix's
#   place finds the sentiment skill the frozen model learned in pretraining;
#   `docs/pocket.md` shows that after 500 steps no method goes beyond the
#   prefixed model's 86.9%, and that on a task the model never saw (MRPC) the
#   prompts stay near the majority class. On random weights there is nothing to
#   select, which is why the earlier tutorials could only show the mechanics.
#
# ## Parameter count
#
# PT trains `l * d` numbers. With `l = 100`: 25,600 for the pocket T5
# (`d = 256`), 51,200 for T5-small (`d = 512`), 76,800 for T5-base and GPT-2
# small (`d = 768`). We compare that with the size of each backbone, built on
# PyTorch's `meta` device (shapes only, no memory).

# %%
backbones = {"pocket-t5": t5.config,                                     # the model we trained on
             "t5-small": T5Config(),                                     # the defaults are t5-small's
             "t5-base": T5Config(d_model=768, d_ff=3072, num_heads=12, num_layers=12, num_decoder_layers=12),
             "gpt2": GPT2Config()}                                       # GPT-2 small
counts = {}
for name, config in backbones.items():
    with torch.device("meta"):
        backbone = T5(config) if isinstance(config, T5Config) else GPT2(config)
    d = config.d_model if isinstance(config, T5Config) else config.n_embd
    total = sum(p.numel() for p in backbone.parameters())
    counts[name] = (100 * d, total)
    print(f"{name:9s} d={d}: PT trains {100 * d:,} numbers, the frozen backbone has {total:,} "
          f"({100 * 100 * d / total:.3f}%)")
if plt:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, (name, (prompt, total)) in enumerate(counts.items()):
        ax.barh(i + 0.2, total, height=0.4, left=1, color="#BBBBBB", label="frozen backbone" if i == 0 else None)
        ax.barh(i - 0.2, prompt, height=0.4, left=1, color="#4C72B0", label="PT prompt (trained)" if i == 0 else None)
        ax.text(total * 1.2, i + 0.2, f"{total:,}", va="center", fontsize=8)
        ax.text(prompt * 1.2, i - 0.2, f"{prompt:,}", va="center", fontsize=8)
    ax.set(xscale="log", xlim=(1e3, 3e9), yticks=range(len(counts)), yticklabels=list(counts),
           xlabel="parameters (log scale)", title="prompt tuning with l = 100: trained vs frozen")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "pt_parameters.png")

# %% [markdown]
# You should see
#
# ```output
# pocket-t5 d=256: PT trains 25,600 numbers, the frozen backbone has 4,853,504 (0.527%)
# t5-small  d=512: PT trains 51,200 numbers, the frozen backbone has 60,506,624 (0.085%)
# t5-base   d=768: PT trains 76,800 numbers, the frozen backbone has 222,903,552 (0.034%)
# gpt2      d=768: PT trains 76,800 numbers, the frozen backbone has 124,439,808 (0.062%)
# ```
#
# ## Checking against `peft` (optional)
#
# Hugging Face's `peft` library implements prompt tuning too. If it and
# `transformers` are installed, we load the pocket T5 in `transformers`, wrap it with
# `peft`'s `PromptTuningConfig`, copy our prompt into it, and compare logits.

# %%
try:
    import warnings
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()                   # keep the output to what this tutorial is about
    warnings.filterwarnings("ignore", category=FutureWarning)
except ImportError:
    get_peft_model = None
    print("peft / transformers not installed: skipping the comparison")

if get_peft_model is not None:
    folder = Path(tempfile.mkdtemp()) / "t5"
    save_pretrained(t5, folder)
    peft_config = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=l,
                                     num_transformer_submodules=1)
    peft_model = get_peft_model(T5ForConditionalGeneration.from_pretrained(folder), peft_config).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(pt_t5.prompt.P)
        ids, mask = t5_batch["input_ids"], t5_batch["attention_mask"]
        decoder_input_ids = t5.shift_right(t5_batch["labels"])
        theirs = peft_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        ours = pt_t5(ids, mask, decoder_input_ids=decoder_input_ids)
    print(f"max |ours - peft|: {(ours - theirs).abs().max().item():.1e}")

# %% [markdown]
# You should see a difference of about `1e-6` or less:
#
# ```output
# max |ours - peft|: ~4.8e-07
# ```
#
# **Next:** tutorial 4, DePT: a shorter prompt plus a low-rank update of the
# input embeddings, at the same parameter budget.
