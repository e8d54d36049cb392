"""Co-training (issue 4): outputs, resume, teacher freeze, switches, gradients, determinism,
DDP on gloo and start-up errors."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch

from rirn.errors import ConfigError
from rirn.losses.car import DEFAULT_CAR_RELATION, PAPER_CAR_RELATION
from rirn.models import build_unet
from rirn.training.checkpoint import load_checkpoint
from rirn.training.nets import car_channels
from rirn.training.setup import check_config
from rirn.training.steps import TERMS, compute_losses, train_step

from .conftest import REPO, compose_config, run_cli
from .step_fixtures import SMALL_MODEL, TINY_RUN, history, make_batch, make_nets, train_run


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache_root):
    tmp = tmp_path_factory.mktemp("smoke")
    overrides = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.progress=false"]
    return train_run(tmp, overrides)


def test_smoke_run_writes_outputs(smoke_run):
    run_dir, last = smoke_run
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) == 4 and len(split["val"]) == 2  # 6 smoke cases, 2:1
    assert not set(split["train"]) & set(split["val"])
    rows = history(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"student/WT", "teacher/ET", "train/total", "lr"} <= set(rows[-1])
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2
    assert {
        "teacher",
        "student",
        "discriminator",
        "optimizers",
        "schedulers",
        "rng",
        "config",
    } <= set(ckpt)
    assert ckpt["modalities"] == ["t1ce"]
    assert last["epoch"] == 2


def test_tensorboard_has_every_term_and_image(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = smoke_run
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for term in TERMS:
        assert f"train/{term}" in tags, term
    assert {"val/student/WT", "val/teacher/ET", "train/lr"} <= tags
    assert acc.Tags()["images"], "no validation picture logged"


def test_resume_continues_epoch_count(smoke_run, tmp_path, cache_root):
    run_dir, _ = smoke_run
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    before = load_checkpoint(copy / "checkpoints" / "last.pt")
    overrides = [
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.progress=false",
        "resume=true",
        "trainer.max_epochs=3",
    ]
    _, last = train_run(tmp_path, overrides, name="resumed")
    after = load_checkpoint(copy / "checkpoints" / "last.pt")
    assert after["epoch"] == 3 and last["epoch"] == 3
    rows = history(copy)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # Poly decay continues from the stored scheduler: lr of epoch 3 is base * (1 - 2/3)^0.9.
    base = rows[0]["lr"]  # epoch 1 runs at the base lr (CPU default 1e-3)
    assert rows[2]["lr"] == pytest.approx(base * (1 - 2 / 3) ** 0.9, rel=1e-6)
    assert before["history"] == after["history"][:2]


def test_resume_of_a_run_before_nested_scoring_refuses_to_mix_scorings(
    smoke_run, tmp_path, cache_root
):
    # Its best_metric (which picks best.pt) scored un-nested masks; today's default is nested.
    run_dir, _ = smoke_run
    shutil.copytree(run_dir, tmp_path / "old")
    ckpt = load_checkpoint(tmp_path / "old" / "checkpoints" / "last.pt")
    del ckpt["config"]["postprocess"]["nested"]
    torch.save(ckpt, tmp_path / "old" / "checkpoints" / "last.pt")
    resume = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.progress=false"]
    resume += ["resume=true", "trainer.max_epochs=3"]
    with pytest.raises(ConfigError, match="add postprocess.nested=false to resume it as trained"):
        train_run(tmp_path, resume, name="old")


def test_fresh_run_over_an_earlier_one_starts_its_own_history(
    smoke_run, tmp_path, cache_root, caplog
):
    # Without resume=true the same folder trains from scratch: the old 2-epoch history and
    # best.pt must not mix into the new 1-epoch run.
    run_dir, _ = smoke_run
    shutil.copytree(run_dir, tmp_path / "again")
    overrides = [
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.progress=false",
        "trainer.max_epochs=1",
    ]
    with caplog.at_level("WARNING", logger="rirn.train"):
        train_run(tmp_path, overrides, name="again")
    assert "holds an earlier run" in caplog.text and "resume=true" in caplog.text
    assert [r["epoch"] for r in history(tmp_path / "again")] == [1]
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "again" / "checkpoints" / name)
        assert ckpt["epoch"] == 1 and ckpt["config"]["trainer"]["max_epochs"] == 1, name


def test_frozen_teacher_is_unchanged(smoke_run, tmp_path, cache_root):
    run_dir, _ = smoke_run
    teacher_ckpt = run_dir / "checkpoints" / "last.pt"
    overrides = [
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.progress=false",
        f"teacher.checkpoint={teacher_ckpt}",
        "teacher.freeze=true",
        "trainer.max_epochs=1",
    ]
    out_dir, _ = train_run(tmp_path, overrides, name="frozen")
    before = load_checkpoint(teacher_ckpt)["teacher"]
    after = load_checkpoint(out_dir / "checkpoints" / "last.pt")["teacher"]
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    student_before = load_checkpoint(teacher_ckpt)["student"]
    student_after = load_checkpoint(out_dir / "checkpoints" / "last.pt")["student"]
    assert any(not torch.equal(student_before[k], student_after[k]) for k in student_before)
    # the student took the teacher's split, and its own checkpoint records it
    teacher_split = load_checkpoint(teacher_ckpt)["split"]
    assert json.loads((out_dir / "split.json").read_text())["val"] == teacher_split["val"]
    assert (
        load_checkpoint(out_dir / "checkpoints" / "last.pt")["split"]["val"]
        == (teacher_split["val"])
    )

    # a split whose validation cases the teacher trained on is refused, unless allowed
    swapped = tmp_path / "swapped.json"
    swapped.write_text(
        json.dumps({"train": teacher_split["val"], "val": teacher_split["train"], "seed": 0})
    )
    leak = "was trained on 4 of .*teacher.allow_split_mismatch=true"
    with pytest.raises(ConfigError, match=leak):
        train_run(tmp_path, [*overrides, f"data.split_file={swapped}"], name="leak")
    train_run(
        tmp_path,
        [*overrides, f"data.split_file={swapped}", "teacher.allow_split_mismatch=true"],
        name="allowed",
    )


@pytest.mark.parametrize(
    "crr,mf,car,adv", [c for c in itertools.product([False, True], repeat=4) if c[0] or not c[1]]
)
def test_each_ablation_switch_combination_trains_a_step(crr, mf, car, adv):
    # PyTorch's default head bias: with rirn's prior the untrained teacher predicts no region,
    # and the mask filter (MF) would leave CRR nothing to compare in this first step.
    switches = [f"loss.crr={crr}", f"loss.mf={mf}", f"loss.car={car}", f"loss.adv={adv}"]
    cfg = compose_config("train", [*SMALL_MODEL, *switches, "model.head_prior=null"])
    nets = make_nets(cfg)
    before = [p.detach().clone() for p in nets.student.parameters()]
    losses = train_step(nets, make_batch(), [2], cfg.loss, torch.device("cpu"), None)
    assert losses.shape == (len(TERMS),) and torch.isfinite(losses).all()
    terms = dict(zip(TERMS, losses.tolist(), strict=True))
    assert (terms["crr"] != 0) == crr and (terms["car"] != 0) == car and (terms["adv"] != 0) == adv
    assert (terms["disc"] != 0) == adv
    assert any(
        not torch.equal(a, b) for a, b in zip(before, nets.student.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("overrides", "relation"),
    [
        ([], DEFAULT_CAR_RELATION),
        (["loss.car_normalize=false", "loss.car_temperature=1"], (False, 1.0)),
        (["loss.car_normalize=true", "loss.car_temperature=0.3"], (True, 0.3)),
        (None, PAPER_CAR_RELATION),  # a run config from before the options: the paper's CAR
    ],
)
def test_car_term_uses_the_configured_relation(overrides, relation):
    from omegaconf import OmegaConf

    cfg = compose_config("train", [*SMALL_MODEL, *(overrides or [])])
    loss = cfg.loss
    if overrides is None:
        loss = OmegaConf.to_container(cfg.loss)
        del loss["car_normalize"], loss["car_temperature"]
        loss = OmegaConf.create(loss)
    nets = make_nets(cfg)
    batch = make_batch()
    terms, _, _ = compute_losses(nets, batch["image"], batch["target"], [2], loss)
    with torch.no_grad():
        t, st = nets.teacher(batch["image"]), nets.student(batch["image"][:, [2]])

    # The paper's Eq. 7 on relation softmax_j(s_ij / T), s = cos or dot, computed naively.
    def rel(out):
        q, k = out.query.double(), out.key.double()
        if relation[0]:
            q, k = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
        return torch.softmax(torch.einsum("bci,bcj->bij", q, k) / relation[1], dim=-1)

    n = t.query.shape[-1]
    want = ((rel(t) - rel(st)) ** 2).sum((1, 2)).mean() / (car_channels(cfg.model) * n)
    assert terms["car"].item() == pytest.approx(want.item(), rel=1e-4)


def test_distillation_terms_send_no_gradient_to_teacher():
    cfg = compose_config("train", SMALL_MODEL)
    nets = make_nets(cfg)
    batch = make_batch()
    terms, _, _ = compute_losses(nets, batch["image"], batch["target"], [2], cfg.loss)
    (terms["crr"] + terms["car"] + terms["adv"]).backward()
    assert all(p.grad is None or not p.grad.any() for p in nets.teacher.parameters())
    assert all(p.grad is None for p in nets.discriminator.parameters())
    assert any(p.grad is not None and p.grad.any() for p in nets.student.parameters())


def test_frozen_teacher_step_matches_and_builds_no_teacher_graph():
    """A frozen teacher gives the student the same losses as a trainable one (same weights), but
    runs without autograd: none of its outputs is part of a graph."""
    cfg = compose_config("train", SMALL_MODEL)
    batch = make_batch()
    trainable = make_nets(cfg)
    frozen = make_nets(cfg, teacher_trainable=False)
    frozen.teacher.requires_grad_(False)
    seen = []
    frozen.teacher.register_forward_hook(lambda m, i, out: seen.append(out))
    torch.manual_seed(1)  # the same dropout draws in both
    ref, _, _ = compute_losses(trainable, batch["image"], batch["target"], [2], cfg.loss)
    torch.manual_seed(1)
    got, probs_t, _ = compute_losses(frozen, batch["image"], batch["target"], [2], cfg.loss)
    for k in ("seg_s", "crr", "car", "adv"):
        assert got[k].item() == pytest.approx(ref[k].item(), rel=1e-6)
    assert got["seg_t"].item() == 0.0 and ref["seg_t"].item() > 0
    assert len(seen) == 1 and seen[0].logits.grad_fn is None and probs_t.grad_fn is None
    assert seen[0].features.grad_fn is None and seen[0].query.grad_fn is None


def test_baseline_step_with_a_frozen_teacher_never_calls_it():
    cfg = compose_config("train", SMALL_MODEL + ["loss=baseline"])
    nets = make_nets(cfg, teacher_trainable=False)
    nets.teacher.register_forward_pre_hook(lambda *a: pytest.fail("the teacher was called"))
    batch = make_batch()
    losses = train_step(nets, batch, [2], cfg.loss, torch.device("cpu"), None)
    terms = dict(zip(TERMS, losses.tolist(), strict=True))
    assert terms["seg_t"] == 0.0 and terms["total"] == pytest.approx(terms["seg_s"])
    # with a co-trained teacher the same config does run it (its own segmentation loss)
    cotrained = make_nets(cfg)
    calls = []
    cotrained.teacher.register_forward_pre_hook(lambda *a: calls.append(1))
    train_step(cotrained, batch, [2], cfg.loss, torch.device("cpu"), None)
    assert calls == [1]


def test_same_seed_same_first_losses(tmp_path, cache_root):
    overrides = [
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.progress=false",
        "trainer.max_epochs=1",
    ]
    _, a = train_run(tmp_path, overrides, name="a")
    _, b = train_run(tmp_path, overrides, name="b")
    assert a["train/total"] == b["train/total"]
    assert a["student/mean"] == b["student/mean"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("modality=t3", "unknown modality 't3'"),
        ("data=brats2020", "needs data.root"),
        ("data.root=/nonexistent/brats", "does not exist"),
        ("data.crop_size=[30,32,32]", "cannot fit"),
        ("teacher.checkpoint=/nonexistent.pt", "does not exist"),
        ("teacher.freeze=true", "needs teacher.checkpoint"),
        ("loss.aggregation=median", "loss.aggregation"),
        ("trainer.precision=8", "trainer.precision"),
        ("loss.seg=focal", "loss.seg='focal'"),
        ("loss.seg_weight.bce=-1", "loss.seg_weight.bce"),
        ("data.fg_prob=1.5", "data.fg_prob"),
        ("data.phenotype_balance=-0.5", "data.phenotype_balance=-0.5 must be in [0, 1]"),
        ("data.fg_regions=[WT,NCR]", "data.fg_regions=['WT', 'NCR']"),
        ("postprocess.et_min_voxels=0", "postprocess.et_min_voxels=0 must be auto"),
        ("postprocess.nested=maybe", "postprocess.nested='maybe' must be true or false"),
        ("optim.lr=-1", "optim.lr=-1 must be a number > 0"),
        ("optim.lr=abc", "optim.lr=abc must be a number > 0"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be a number >= 1"),
        ("data.num_workers=-1", "data.num_workers=-1 must be a number >= 0"),
        ("optim.betas=[0.9]", "optim.betas=[0.9] must be two numbers in"),
        # model errors surface at start-up too, before data preparation
        ("model.norm_groups=3", "model.norm_groups=3 must divide every width"),
    ],
)
def test_bad_config_fails_with_message(override, message, tmp_path):
    cfg = compose_config("train", ["debug=smoke", override])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config(cfg, tmp_path)


def test_empty_data_root_and_mismatched_teacher(smoke_run, tmp_path):
    cfg = compose_config("train", ["debug=smoke", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="is empty"):
        check_config(cfg, tmp_path)
    run_dir, _ = smoke_run
    cfg = compose_config(
        "train",
        [
            "debug=smoke",
            "model.widths=[8,16,32,64]",
            f"teacher.checkpoint={run_dir / 'checkpoints' / 'last.pt'}",
        ],
    )
    from rirn.training.setup import load_teacher_weights

    with pytest.raises(ConfigError, match="does not match the model"):
        load_teacher_weights(build_unet(cfg.model, 4), cfg.teacher.checkpoint)
    with pytest.raises(ConfigError, match="does not match the model"):
        check_config(cfg, tmp_path)  # at start-up, before any data preparation
    # same names and shapes, another function: refused by the recorded model config
    ckpt = f"teacher.checkpoint={run_dir / 'checkpoints' / 'last.pt'}"
    for override, message in (
        ("model.norm_groups=4", "trained with model.norm_groups=8, this run has 4; add model.norm"),
        ("model.nonlocal_scaled=true", "add model.nonlocal_scaled=false"),
    ):
        cfg = compose_config("train", ["debug=smoke", override, ckpt])
        with pytest.raises(ConfigError, match=message):
            check_config(cfg, tmp_path)


def test_cli_bad_modality_is_one_line(tmp_path):
    res = run_cli(["-m", "rirn.train", "modality=t1+pd", f"hydra.run.dir={tmp_path}"], cwd=REPO)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert (
        len(lines) == 1
        and "unknown modality 'pd'" in lines[0]
        and "flair, t1, t1ce, t2" in lines[0]
    )


def test_cli_smoke_run_and_two_process_gloo(tmp_path, cache_root):
    """The real command line, single process and under torchrun with 2 CPU processes."""
    common = [
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.max_epochs=1",
        "trainer.progress=false",
    ]
    res = run_cli(["-m", "rirn.train", *common, f"hydra.run.dir={tmp_path / 'single'}"], cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "single" / ".hydra" / "config.yaml").is_file()
    res = run_cli(
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",  # rendezvous on a free port: a fixed one can still be in TIME_WAIT
            "--tee=3",  # each rank's output, prefixed, in ours: a failure names its rank's error
            "-m",
            "rirn.train",
            *common,
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # rank 0 only writes
    ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    # each rank's RNG (seeded seed + rank) is saved, for its own dropout masks after a resume
    ranks = ckpt["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert torch.equal(ranks[0]["torch"], ckpt["rng"]["torch"])


def test_non_finite_loss_names_term_and_step_and_keeps_checkpoint(
    tmp_path, cache_root, monkeypatch
):
    import rirn.training.engine as engine

    real_step = engine.train_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        losses = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2 (4 training cases, batch 2: 2 steps per epoch), 1st step
            losses = losses.clone()
            losses[TERMS.index("car")] = float("nan")
        return losses

    monkeypatch.setattr(engine, "train_step", poisoned)
    overrides = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.progress=false"]
    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite car loss .* epoch 2, step 3"):
        train_run(tmp_path, overrides, name="nan")
    assert load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path, cache_root):
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "rirn.train",
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.max_epochs=4",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while time.time() < deadline and not last.is_file():
        time.sleep(0.2)
    time.sleep(1.0)  # now inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(last)["epoch"]
    assert 1 <= done < 4
    res = run_cli(["-m", "rirn.train", *args[3:], "resume=true"], cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = history(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_resume_is_exact_with_persistent_workers(tmp_path, cache_root):
    """Stopped after epoch 1 and resumed, a run ends bit for bit where an uninterrupted one does,
    also with persistent loader workers: crops are keyed on (seed, epoch, index) and the
    loader's seed draws leave the checkpointed torch RNG (dropout) alone."""
    common = [*TINY_RUN, f"data.cache_root={cache_root}", "data.num_workers=2"]
    straight, _ = train_run(tmp_path, common + ["trainer.max_epochs=2"], name="straight")
    train_run(tmp_path, common + ["trainer.max_epochs=1"], name="split")
    resumed, _ = train_run(tmp_path, common + ["trainer.max_epochs=2", "resume=true"], name="split")
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    for net in ("teacher", "student", "discriminator"):
        for key, value in a[net].items():
            assert torch.equal(value, b[net][key]), (net, key)
    assert [r["train/total"] for r in a["history"]] == [r["train/total"] for r in b["history"]]


def test_distill_scale_start_and_ramp():
    from rirn.training.steps import distill_scale

    assert [distill_scale(e, 0) for e in range(3)] == [1.0, 1.0, 1.0]  # the paper
    assert [distill_scale(e, 4) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [distill_scale(e, 0, start_epoch=2) for e in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert [distill_scale(e, 2, start_epoch=2) for e in range(6)] == [0, 0, 0, 0.5, 1, 1]


def test_before_the_start_epoch_no_distillation_term_is_computed():
    cfg = compose_config("train", SMALL_MODEL)
    nets = make_nets(cfg)
    batch = make_batch()
    terms, probs_t, _ = compute_losses(
        nets, batch["image"], batch["target"], [2], cfg.loss, distill_scale=0.0
    )
    assert terms["crr"].item() == terms["car"].item() == terms["adv"].item() == 0.0
    assert terms["total"].item() == pytest.approx(terms["seg_t"].item() + terms["seg_s"].item())
    assert probs_t is not None  # the discriminator still trains on the teacher's maps


def test_resume_refuses_a_loss_the_run_did_not_train_with():
    from omegaconf import OmegaConf

    from rirn.training.resume import check_resume_loss

    cfg = compose_config("train", [])
    stored = OmegaConf.to_container(cfg.loss, resolve=True)
    check_resume_loss(stored, cfg.loss)  # the same settings: resumes
    # A checkpoint from before the CAR options trained with the paper's relation.
    del stored["car_normalize"], stored["car_temperature"]
    with pytest.raises(ConfigError, match="loss.car_normalize=false loss.car_temperature=1.0"):
        check_resume_loss(stored, cfg.loss)
    paper = compose_config("train", ["loss.car_normalize=false", "loss.car_temperature=1"])
    check_resume_loss(stored, paper.loss)
    stored["weight"]["crr"] = 0.5
    with pytest.raises(ConfigError, match=r"\(car_normalize, car_temperature, weight.crr\)"):
        check_resume_loss(stored, cfg.loss)


def test_resume_refuses_other_optimiser_groups():
    from rirn.training.resume import check_resume_optim

    check_resume_optim({}, {"head_lr_scale": 1.0})  # a checkpoint from before the key: 1
    check_resume_optim({"head_lr_scale": 4}, {"head_lr_scale": 4.0})
    with pytest.raises(ConfigError, match=r"optim.head_lr_scale=1.0 to resume"):
        check_resume_optim({}, {"head_lr_scale": 4})


@pytest.mark.parametrize("value", [0, -1, "fast", True])
def test_check_config_rejects_a_bad_head_lr_scale(value, tmp_path):
    cfg = compose_config("train", [f"optim.head_lr_scale={value}"])
    with pytest.raises(ConfigError, match="optim.head_lr_scale"):
        check_config(cfg, tmp_path)


def test_head_lr_scale_moves_only_the_heads_faster():
    from rirn.training.nets import build_step_nets

    cfg = compose_config("train", [*SMALL_MODEL, "loss=baseline"])
    lr, scale = 1e-3, 4.0
    nets = {}
    for k in (1.0, scale):
        cfg.optim.head_lr_scale = k
        torch.manual_seed(0)
        nets[k] = build_step_nets(cfg.model, cfg.loss, cfg.optim, 1, torch.device("cpu"))
    one, four = nets[1.0].opt_main, nets[scale].opt_main
    # Scale 1: one group, student then teacher, as before the option (old checkpoints resume).
    student, teacher = nets[1.0].student, nets[1.0].teacher
    assert len(one.param_groups) == 1
    assert [id(p) for p in one.param_groups[0]["params"]] == [
        id(p) for p in [*student.parameters(), *teacher.parameters()]
    ]
    body, head = four.param_groups
    s4, t4 = nets[scale].student, nets[scale].teacher
    assert {id(p) for p in head["params"]} == {
        id(p) for p in [*s4.head.parameters(), *t4.head.parameters()]
    }
    assert len(body["params"]) + len(head["params"]) == len(list(s4.parameters())) * 2
    assert (body["lr"], head["lr"]) == (lr, lr * scale)
    # Adam's first step moves every weight with a gradient by lr (m / sqrt(v) = sign(g)):
    # the heads by 4 lr, everything else by lr.
    before = {n: p.detach().clone() for n, p in s4.named_parameters()}
    batch = make_batch()
    out = s4(batch["image"][:, 2:3])
    out.logits.square().mean().backward()
    four.step()
    checked = set()
    for name, p in s4.named_parameters():
        step = (p.detach() - before[name]).abs()
        moved = step[p.grad.abs() > 1e-4]  # Adam's eps (1e-8) shrinks steps of tiny gradients
        if moved.numel() == 0:  # e.g. theta/phi behind the non-local block's zero gate
            continue
        expected = lr * scale if name.startswith("head.") else lr
        torch.testing.assert_close(moved, torch.full_like(moved, expected), rtol=1e-3, atol=0)
        checked.add(name.split(".")[0])
    assert {"head", "init_conv", "encoder", "decoder"} <= checked
