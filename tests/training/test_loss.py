"""``trainer.loss=answer_only`` computes the same loss, logits and gradients as the model's own path.

Every comparison is with an independent value: the token-mean cross-entropy written out here from
the full logits (``reference``), which the plain path must match too, so a wrong shift, ignore
index or normalisation in either path fails.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import pair_row, prompt_option, run_app
from transformers import Trainer, TrainingArguments

from vlmqc.collate import IGNORE, Collator, sequence_lengths
from vlmqc.config import ImageSizeConfig, LoraConfig, LossMode, ModelConfig
from vlmqc.models import adapt, families, load
from vlmqc.training.loss import AnswerOnlyTrainer, answer_span, trainer_class

FAMILIES = {"llava": ModelConfig(name="tiny"), "qwen2_vl": families()["qwen2_vl"].tiny_config()}
LORA = LoraConfig(name="r4", r=4, alpha=8, dropout=0.0)  # no dropout: the two paths must see the same function
FULL = LoraConfig(name="full", full=True)
GRAD_TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}


def rows(*verdicts: str) -> list[dict]:
    return [pair_row(v, id=f"t-{i}-{v}") for i, v in enumerate(verdicts)]


def model_and_batches(models_dir, name: str, lora: LoraConfig):
    model, processor, family, _ = load(FAMILIES[name], ImageSizeConfig(name="native"), str(models_dir), "cpu")
    torch.manual_seed(0)
    model = adapt(model, family, lora)
    if (
        not lora.full
    ):  # PEFT starts B at zero: move it, so the adapters change the logits and get gradients of their own
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    collate = Collator(processor, family, prompt_option("short"), train=True)
    # two micro-batches of different answer lengths: a mean of per-batch means is not the token mean
    return model, [collate(rows("defective", "pass")), collate(rows("pass", "pass", "pass"))]


def trainer(cls, model, tmp_path, accumulation: int = 2) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=2,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=True,
    )
    return cls(model=model, args=args)


def reference(model, batches) -> torch.Tensor:
    """The token mean of the next-token cross-entropy over every label of every batch, from the full logits."""
    total, count = 0.0, 0
    for b in batches:
        logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits.float()
        targets = b["labels"][:, 1:]
        total = total + torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        count += int((targets != IGNORE).sum())
    return total / count


def gradients(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def test_the_span_covers_every_label_and_only_the_span():
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 5, 6, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE, 7, 8]])
    keep, shift = answer_span(labels)
    assert keep.tolist() == [2, 3, 4]  # position i predicts token i + 1
    assert shift.tolist() == [[5, 6, IGNORE], [IGNORE, 7, 8]]
    keep, shift = answer_span(torch.full((2, 4), IGNORE))
    assert keep.tolist() == [3] and (shift == IGNORE).all()


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("lora", [LORA, FULL], ids=["lora", "full"])
def test_answer_only_matches_the_full_path(models_dir, tmp_path, name, lora):
    model, batches = model_and_batches(models_dir, name, lora)
    assert trainer_class(LossMode.answer_only, model) == (AnswerOnlyTrainer, LossMode.answer_only)
    plain, answer_only = (
        trainer(Trainer, model, tmp_path / "plain"),
        trainer(AnswerOnlyTrainer, model, tmp_path / "answer_only"),
    )
    batch = batches[0]

    # one batch: the loss the model itself computes, and the logits at the answer positions
    model.eval()
    with torch.no_grad():
        own = model(**batch).loss
        loss, outputs = answer_only.compute_loss(model, batch, return_outputs=True)
        full_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    keep, _ = answer_span(batch["labels"])
    assert (
        outputs.logits.shape[1] == len(keep) < batch["input_ids"].shape[1] // 4
    )  # the head ran on a few positions only
    torch.testing.assert_close(loss, own, rtol=1e-6, atol=0)
    torch.testing.assert_close(outputs.logits, full_logits[:, keep], rtol=1e-6, atol=1e-6)

    # evaluation's loss goes through the same compute_loss
    eval_plain = plain.prediction_step(model, batch, prediction_loss_only=True)[0]
    eval_answer_only = answer_only.prediction_step(model, batch, prediction_loss_only=True)[0]
    torch.testing.assert_close(eval_answer_only, eval_plain, rtol=1e-6, atol=0)

    # gradient accumulation over two micro-batches, as the Trainer's loop runs it: num_items_in_batch
    model.train()
    (sum(model(**b).loss for b in batches) / 2).backward()
    mean_of_means = gradients(model)
    expected = reference(model, batches)
    expected.backward()
    want = gradients(model)
    # the micro-batches' answer lengths differ: the token mean's gradients are not the mean of the batches' means'
    assert any(not torch.allclose(mean_of_means[n], want[n], **GRAD_TOLERANCE) for n in want)
    assert want and all(g.abs().sum() > 0 for g in want.values()), "every trainable parameter gets a gradient"
    for t in (plain, answer_only):
        items = t._get_num_items_in_batch(batches, torch.device("cpu"))
        t.current_gradient_accumulation_steps = 2
        losses = [t.training_step(model, b, items) for b in batches]
        torch.testing.assert_close(sum(losses), expected.detach(), rtol=1e-6, atol=0)
        got = gradients(model)
        assert got.keys() == want.keys()
        for n in want:
            torch.testing.assert_close(
                got[n], want[n], **GRAD_TOLERANCE, msg=lambda m, n=n, t=t: f"{type(t).__name__}: {n}: {m}"
            )


def test_a_model_without_logits_to_keep_falls_back_with_a_warning(caplog):
    class Plain(torch.nn.Module):
        def forward(self, input_ids, labels=None):
            return input_ids

    with caplog.at_level("WARNING", logger="vlmqc.training.loss"):
        assert trainer_class(LossMode.answer_only, Plain()) == (Trainer, LossMode.full)
    assert [r.getMessage() for r in caplog.records] == [
        "trainer.loss=answer_only: Plain.forward takes no logits_to_keep; the full loss runs instead"
    ]
    assert trainer_class(LossMode.full, Plain()) == (Trainer, LossMode.full)


def first_loss(run_dir) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["train/loss"] for r in rows if "train/loss" in r)


@pytest.mark.slow
def test_a_trial_records_the_same_first_loss_on_either_path(tmp_path):
    common = [
        "logger=none",
        "trainer.max_steps=4",
        "trainer.logging_steps=1",
        "trainer.eval_before=false",
        "trainer.eval_limit=4",
        "trainer.samples=0",
        "trainer.batch_size=4",
        "trainer.grad_accum=2",
        "data.train_size=32",
        "data.test_size=8",
        "trainer.group_by_length=true",
    ]
    summaries = {}
    for mode in ("full", "answer_only"):
        result = run_app(tmp_path, "vlmqc.train", *common, f"trainer.loss={mode}", f"hydra.run.dir=outputs/{mode}")
        assert result.returncode == 0, result.stderr[-3000:]
        summaries[mode] = json.loads((tmp_path / "outputs" / mode / "summary.json").read_text())
        assert summaries[mode]["facts"]["loss"] == mode
    full, answer_only = (first_loss(tmp_path / "outputs" / m) for m in ("full", "answer_only"))
    assert answer_only == pytest.approx(full, rel=1e-5)


BAD_VALUES = [
    ("trainer.loss=fast", "trainer.loss"),
    ("trainer.compile_mode=turbo", "trainer.compile_mode"),
    ("trainer.compile_mode=max-autotune", "trainer.compile_mode"),
    ("trainer.liger=maybe", "trainer.liger"),
    ("trainer.liger=true trainer.loss=answer_only", "trainer.liger"),
    ("trainer.liger=true trainer.device=cpu", "trainer.liger"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_a_bad_value_is_refused_naming_the_key(cli_exit, tmp_path, override, key):
    code, err = cli_exit("vlmqc.train", *override.split(), "logger=none")
    assert code == 2 and key in err, err[-2000:]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # the same in a real process each (tests/test_config.py runs one in the default run)
@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_a_bad_value_exits_2_naming_the_key(tmp_path, override, key):
    result = run_app(tmp_path, "vlmqc.train", *override.split(), "logger=none")
    assert result.returncode == 2, result.stderr[-2000:]
    assert key in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_sequence_lengths_are_the_collated_lengths(models_dir):
    """group_by_length's lengths, from one collated row per kind, against every row collated."""
    import datasets

    _, processor, family, _ = load(FAMILIES["qwen2_vl"], ImageSizeConfig(name="native"), str(models_dir), "cpu")
    star = {
        "id": "s",
        "task": "star",
        "image": pair_row().get("image").resize((448, 190)),
        "verdict": "",
        "defects": [],
        "target": "U3",
        "answer": "",
    }
    two = {
        **pair_row("defective", id="two"),
        "defects": [{"position": "C5", "type": "missing"}, {"position": "U1", "type": "bent"}],
    }
    rows_ = [
        pair_row("defective", id="a"),
        pair_row("pass", id="b"),
        star,
        two,
        pair_row("pass", size=(448, 300), id="c"),
    ]
    dataset = datasets.Dataset.from_list([{**r, "meta": "{}"} for r in rows_]).cast_column("image", datasets.Image())
    collate = Collator(processor, family, prompt_option("long"), train=True)
    exact = [int(collate([dataset[i]])["attention_mask"].sum()) for i in range(len(dataset))]
    assert len(set(exact)) >= 4, exact  # the rows differ in image tokens and in answers
    assert sequence_lengths(collate, dataset) == exact


def test_the_switches_reach_the_training_arguments(tmp_path):
    from conftest import compose_app

    from vlmqc.config import to_object
    from vlmqc.training.arguments import training_arguments

    t = to_object(
        compose_app(
            "train", ["trainer.compile=true", "trainer.compile_mode=reduce-overhead", "trainer.group_by_length=true"]
        ).trainer,
        "trainer",
    )
    args = training_arguments(t, tmp_path, "cpu")
    assert (args.torch_compile, args.torch_compile_mode, args.train_sampling_strategy) == (
        True,
        "reduce-overhead",
        "group_by_length",
    )
    args = training_arguments(to_object(compose_app("train").trainer, "trainer"), tmp_path, "cpu")
    assert (args.torch_compile, args.torch_compile_mode, args.train_sampling_strategy) == (False, None, "random")


@pytest.mark.slow
def test_compile_gives_the_same_loss_and_gradients(models_dir, tmp_path, monkeypatch):
    """trainer.compile=true against false, through vlmqc's own training_arguments and the Trainer's
    own loop (which torch.compiles the model in accelerate's prepare, inside train(): calling
    training_step directly would step the uncompiled model): one step of the tiny LLaVA with LoRA
    on CPU, inductor backend (transformers' default), fp32, same seed, same perturbed lora_B, same
    batch. Asserts the compiled run stepped an OptimizedModule and that dynamo traced graphs which
    inductor compiled (so the test cannot pass vacuously), then the same logged loss and gradient
    norm and the same gradient of every trainable parameter (taken before the optimizer step).
    Not checked: compile_mode (its modes matter on CUDA), later steps, the optimizer's update."""
    import torch._dynamo
    import torch._inductor.codecache
    from conftest import compose_app
    from transformers import TrainerCallback

    from vlmqc.config import to_object
    from vlmqc.training.arguments import training_arguments

    # inductor's caches in tmp_path, not in the shared temp folder: its cache folder, and its
    # precompiled headers, which it keeps in the default folder whatever TORCHINDUCTOR_CACHE_DIR says.
    # (Importing torch._dynamo, which importing transformers' Trainer does, already made that default
    # folder, empty: cache_dir() runs at import; nothing is written there.)
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setattr(torch._inductor.codecache, "_HEADER_DIR", str(cache / "precompiled_headers"))
    monkeypatch.setattr(torch._inductor.codecache, "_HEADER_LOCK_DIR", str(cache / "precompiled_headers" / "locks"))

    class Gradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    _, processor, family, _ = load(FAMILIES["llava"], ImageSizeConfig(name="native"), str(models_dir), "cpu")
    models = {c: model_and_batches(models_dir, "llava", LORA)[0] for c in (False, True)}
    start = models[False].state_dict()
    assert all(torch.equal(v, start[k]) for k, v in models[True].state_dict().items()), "the two copies start equal"
    results = {}
    try:
        for compile_ in (False, True):
            overrides = [
                f"trainer.compile={str(compile_).lower()}",
                "trainer.device=cpu",
                "trainer.precision=fp32",
                "trainer.max_steps=1",
            ]
            overrides += [
                "trainer.batch_size=2",
                "trainer.logging_steps=1",
                "trainer.max_grad_norm=0",
            ]  # no clipping: the raw gradients
            args = training_arguments(
                to_object(compose_app("train", overrides).trainer, "trainer"), tmp_path / str(compile_), "cpu"
            )
            assert (args.torch_compile, args.torch_compile_backend) == (
                (True, "inductor") if compile_ else (False, None)
            )
            grads = Gradients()
            # two answers of different lengths: padding and ignored labels in the batch
            collate = Collator(processor, family, prompt_option("short"), train=True)
            trainer = Trainer(
                model=models[compile_],
                args=args,
                train_dataset=rows("defective", "pass"),
                data_collator=collate,
                callbacks=[grads],
            )
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            trainer.train()
            counters = {k: dict(v) for k, v in torch._dynamo.utils.counters.items()}
            compiled = isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
            assert compiled == compile_, type(trainer.model_wrapped)
            if compile_:
                assert trainer.model_wrapped._orig_mod is trainer.model
                assert counters["stats"]["unique_graphs"] > 0 and counters["frames"]["ok"] > 0, counters.get("stats")
                assert counters["inductor"]["fxgraph_cache_miss"] > 0, "inductor compiled the graphs (no cache to hit)"
                assert any(cache.iterdir()), "inductor wrote its cache to tmp_path"
            else:
                assert not counters.get("stats"), counters
            log = next(e for e in trainer.state.log_history if "loss" in e)
            results[compile_] = (log["loss"], log["grad_norm"], grads.grads)
    finally:
        torch._dynamo.reset()  # no compiled code left behind for the tests after this one

    (loss, norm, want), (compiled_loss, compiled_norm, got) = results[False], results[True]
    assert compiled_loss == pytest.approx(loss, rel=1e-5), results
    assert compiled_norm == pytest.approx(norm, rel=1e-5), results
    assert want and all(g.abs().sum() > 0 for g in want.values()), "every trainable parameter gets a gradient"
    assert got.keys() == want.keys()
    for n in want:
        # inductor fuses and reorders the fp32 reductions: measured here, the largest difference is 6e-6
        # of its tensor's largest entry, and rtol=1e-4 needs atol 4.5e-8 for entries near zero (the
        # smallest tensor's largest entry is 2.4e-3); loss and gradient norm agree to 3e-7
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")


def test_liger_is_refused_where_it_cannot_run(tmp_path):
    """device=auto on a machine without CUDA: known only at run time, refused before training, naming the key."""
    from conftest import compose_app

    from vlmqc.config import ConfigError, to_object
    from vlmqc.training.arguments import training_arguments

    t = to_object(compose_app("train", ["trainer.liger=true"]).trainer, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.liger=true.*CUDA"):
        training_arguments(t, tmp_path, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger's kernels are Triton: CUDA only")
def test_liger_gives_the_same_loss_and_gradient_norm(models_dir, tmp_path):
    """trainer.liger=true (fused RMSNorm, RoPE, SwiGLU, linear+cross-entropy) against the plain path,
    on the tiny Qwen2-VL in bf16, through the Trainer's own loop (which applies the kernels): the
    first step's loss and gradient norm, same model, same batch."""
    pytest.importorskip("liger_kernel")
    from conftest import compose_app

    from vlmqc.config import to_object
    from vlmqc.training.arguments import training_arguments

    results = {}
    for liger in (False, True):
        model, processor, family, _ = load(
            FAMILIES["qwen2_vl"], ImageSizeConfig(name="native"), str(models_dir), "cuda"
        )
        torch.manual_seed(0)
        model = adapt(model, family, LORA)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        overrides = [
            f"trainer.liger={str(liger).lower()}",
            "trainer.precision=bf16",
            "trainer.device=cuda",
            "trainer.max_steps=1",
            "trainer.batch_size=3",
            "trainer.logging_steps=1",
            "trainer.save_steps=1000",
            "trainer.lr=1e-9",
        ]
        t = to_object(compose_app("train", overrides).trainer, "trainer")
        trainer = Trainer(
            model=model,
            args=training_arguments(t, tmp_path / str(liger), "cuda"),
            train_dataset=rows("defective", "pass", "pass"),
            data_collator=Collator(processor, family, prompt_option("short"), train=True),
        )
        trainer.train()
        fused = [m for m in trainer.model.modules() if "liger" in getattr(m.forward, "__module__", "")]
        assert bool(fused) == liger, "the kernels were applied" if not liger else "liger patched nothing"
        log = next(e for e in trainer.state.log_history if "loss" in e)
        results[liger] = (log["loss"], log["grad_norm"])
        del trainer, model
        torch.cuda.empty_cache()
    (plain_loss, plain_norm), (liger_loss, liger_norm) = results[False], results[True]
    assert plain_loss == pytest.approx(liger_loss, rel=2e-2), results
    assert plain_norm == pytest.approx(liger_norm, rel=5e-2), results
