import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from squeezenet.checkpoint import load_checkpoint, read_metadata
from squeezenet.config import make_config
from squeezenet.train import train

ARTIFACTS = ["config.json", "metrics.csv", "metrics.jsonl", "loss.png", "accuracy.png", "confusion.png",
             "best.safetensors", "last.safetensors", "last.state.pt"]
QUIET = lambda *a, **k: None  # noqa: E731


def test_default_run_writes_every_artifact_and_learns(trained_run):
    for name in ARTIFACTS:
        assert (trained_run / name).is_file(), name
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds"):
        assert key in rows[0]
    assert rows[-1]["val_count"] == 120
    meta = read_metadata(trained_run)
    assert meta.arch == "squeezenet1_1" and len(meta.class_names) == 10
    assert meta.preprocess.image_size == 32
    state = torch.load(trained_run / "last.state.pt", weights_only=True)  # no pickled objects
    assert state["epoch"] == 2


def test_cli_train_eval_predict(tmp_path, cli, trained_run):
    code, out, err = cli("eval", trained_run, "--split", "val", "--json", tmp_path / "e.json")
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["count"] == 120 and 0 <= result["top1"] <= 100 and result["top5"] >= result["top1"]
    best_val = json.loads((trained_run / "best_val.json").read_text())
    assert result["top1"] == pytest.approx(best_val["top1"])  # eval re-carves the same split
    code, out, _ = cli("eval", trained_run / "best.safetensors", "--split", "test")
    assert code == 0 and "top-1" in out and "confusion matrix" in out
    code, out, err = cli("eval", trained_run, "--split", "val", "--tta", "--tta-shift", "1",
                         "--json", tmp_path / "s.json")
    assert code == 0 and "6 views" in out, err
    assert json.loads((tmp_path / "s.json").read_text())["tta_shift"] == 1
    code, _, err = cli("eval", trained_run, "--tta", "--tta-shift", "9")
    assert code == 2 and "--tta-shift must be 0 to 4" in err

    from squeezenet.data import make_shapes

    shapes = make_shapes(3, 32, seed=99)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(shapes.images[i].permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    code, out, err = cli("predict", trained_run, *paths, "--top-k", "3", "--json", tmp_path / "p.json")
    assert code == 0, err
    preds = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert len(preds) == 3 and len(preds[0]["top"]) == 3
    probs = [t["probability"] for t in preds[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def _weights(path):
    return load_file(str(path))


def test_resume_gives_identical_weights(tmp_path):
    base = {"epochs": 4, "train_size": 200, "batch_size": 45, "progress": False, "ema": 0.9}
    train(make_config({**base, "out": str(tmp_path / "straight")}))
    train(make_config({**base, "out": str(tmp_path / "split"), "stop_after": 2}))
    assert json.loads((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2
    train(make_config({"resume": str(tmp_path / "split"), "progress": False}))
    a, b = _weights(tmp_path / "straight" / "last.safetensors"), _weights(tmp_path / "split" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "seconds")}  # noqa: E731
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "straight" / "metrics.jsonl") == strip(tmp_path / "split" / "metrics.jsonl")


def test_ema_warms_up_instead_of_keeping_the_first_steps_weights():
    from torch.optim.swa_utils import AveragedModel

    from squeezenet.schedule import ema_with_warmup

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    torch.nn.init.zeros_(net[0].weight)
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.999), use_buffers=True)
    ema.update_parameters(net)  # the first update copies: the average starts at the step-1 weights (0)
    torch.nn.init.ones_(net[0].weight)
    net[1].num_batches_tracked += 100
    for _ in range(100):
        ema.update_parameters(net)
    # A fixed 0.999 would still hold 0.999**100 = 90% of the zeros (0.095); the warm-up's decay
    # starts at 0.1 and is 0.92 by step 100: the first step's weights keep under 10%.
    assert 0.9 < ema.module[0].weight.mean().item() < 1.0
    assert int(ema.module[1].num_batches_tracked) == 100


def test_split_seed_holds_the_validation_split_while_seed_varies(tmp_path):
    from squeezenet.splits import eval_data

    base = {"epochs": 1, "train_size": 150, "batch_size": 50, "progress": False}
    runs = {"a": {"seed": 1, "split_seed": 5}, "b": {"seed": 2, "split_seed": 5}, "c": {"seed": 1}}
    val, meta = {}, {}
    for name, seeds in runs.items():
        train(make_config({**base, **seeds, "out": str(tmp_path / name)}))
        meta[name] = read_metadata(tmp_path / name)
        data = eval_data(meta[name], split="val")
        val[name] = data.uint8(torch.arange(len(data)))
    assert (meta["a"].split_seed, meta["b"].split_seed, meta["c"].split_seed) == (5, 5, 1)
    assert torch.equal(val["a"], val["b"])  # one split for both seeds
    assert not torch.equal(val["a"], val["c"])  # by default the split follows --seed
    a, b = _weights(tmp_path / "a" / "last.safetensors"), _weights(tmp_path / "b" / "last.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the seeds still differ in everything else


def test_crop_pad_larger_than_the_image_is_refused(tmp_path, cli):
    code, out, err = cli("train", "--train-size", "64", "--image-size", "16", "--crop-pad", "16",
                         "--out", tmp_path / "run", "--no-progress")
    assert code == 1 and "--crop-pad 16 must be smaller than the 16 px images" in err
    assert not (tmp_path / "run" / "last.state.pt").exists()


def test_resume_to_more_epochs_with_constant_lr(tmp_path):
    base = {"train_size": 150, "batch_size": 45, "progress": False, "schedule": "constant", "warmup_epochs": 0}
    train(make_config({**base, "epochs": 2, "out": str(tmp_path / "a")}))
    train(make_config({"resume": str(tmp_path / "a"), "epochs": 3, "progress": False}))
    train(make_config({**base, "epochs": 3, "out": str(tmp_path / "b")}))
    a, b = _weights(tmp_path / "a" / "last.safetensors"), _weights(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_schedule_warms_up_then_decays_to_zero_at_the_budget():
    from squeezenet.schedule import TimeBudget

    budget = TimeBudget(100.0, "onecycle", 1 / 10)  # warm-up: 10% of the time
    at = lambda seconds: (setattr(budget, "spent", seconds), budget.factor())[1]  # noqa: E731
    assert at(0) == 0.01 and at(5) == pytest.approx(0.5) and at(10) == pytest.approx(1.0)
    assert at(55) == pytest.approx(0.5) and at(100) == 0.0 and at(130) == 0.0 and budget.done


def test_time_budget_ends_the_run_and_resume_continues_the_spent_time(tmp_path, cli):
    run = tmp_path / "run"
    # --epochs 100 would take 20+ s: here it sets only the warm-up's share (1%)
    code, out, err = cli("train", "--train-size", "300", "--batch-size", "45", "--time-budget", "2s",
                         "--epochs", "100", "--out", run, "--no-progress")
    assert code == 0, err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    spent = sum(r["seconds"] for r in rows)
    assert 1.99 <= spent < 5.0  # stops at the step that crosses the budget (rows hold rounded seconds)
    assert "epoch   1  train" in out  # no "/epochs": the budget, not a count, ends the run
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["spent"] == pytest.approx(spent, abs=0.01)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # the schedule ended with the budget
    code, out, err = cli("train", "--resume", run, "--no-progress")
    assert code == 0 and "already spent its 2 s budget" in out, err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(rows)
    code, out, err = cli("train", "--resume", run, "--time-budget", "3s", "--no-progress")
    more = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert code == 0 and len(more) > len(rows) and 2.99 <= sum(r["seconds"] for r in more) < 6.0, err


def test_outline_configuration_runs(tmp_path, cli):
    code, out, err = cli("train", "--dataset", "noise", "--epochs", "1", "--batch-size", "32", "--optimizer", "adam",
                         "--lr", "1e-3", "--train-size", "64", "--out", tmp_path / "noise", "--no-progress")
    assert code == 0, err
    assert "img/s" in out and (tmp_path / "noise" / "best.safetensors").exists()


def test_folder_training_and_class_names(tmp_path, cli, image_folder):
    code, out, err = cli("train", "--dataset", "folder", "--data-dir", image_folder, "--image-size", "32",
                         "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--small-input",
                         "--no-batch-norm", "--squeeze-ratio", "0.25", "--pool-after", "conv1,fire4",
                         "--stem-channels", "24", "--augment", "crop", "--crop-pad", "3", "--out", tmp_path / "run",
                         "--no-progress")
    assert code == 0, err
    model, meta = load_checkpoint(tmp_path / "run")
    assert meta.class_names == ["cat", "dog"] and model.num_classes == 2
    assert meta.model_kwargs["squeeze_ratio"] == 0.25 and model.features[3].squeeze.out_channels == 32
    assert meta.model_kwargs["pool_after"] == ["conv1", "fire4"]
    assert meta.model_kwargs["stem_channels"] == 24 and model.features[0].out_channels == 24
    assert meta.augment == "crop" and meta.crop_pad == 3  # compress fine-tunes with them
    pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert [type(model.features[i - 1]).__name__ for i in pools] == ["ReLU", "Fire"]
    assert model.features[pools[1] - 1] is [m for m in model.features if hasattr(m, "squeeze")][2]  # fire4


def test_training_learns_a_separable_task(tmp_path, cli):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "colours", classes=("red", "green", "blue"), per_class=40, size=16)
    code, out, err = cli("train", "--dataset", "folder", "--data-dir", tmp_path / "colours", "--image-size", "16",
                         "--small-input", "--batch-norm", "--no-final-relu", "--epochs", "8", "--batch-size", "16",
                         "--lr", "0.05", "--val-fraction", "0.25", "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 70  # chance is 33%


def test_finetune_from_weights_file(tmp_path, cli):
    from squeezenet import create_model

    torch.save(create_model("squeezenet1_1").state_dict(), tmp_path / "imagenet.pth")
    code, out, err = cli("train", "--dataset", "shapes", "--image-size", "64", "--no-small-input",
                         "--no-batch-norm", "--weights", tmp_path / "imagenet.pth", "--epochs", "1",
                         "--train-size", "64", "--batch-size", "32", "--out", tmp_path / "ft", "--no-progress")
    assert code == 0, err
    assert "classifier re-initialised" in out


def test_final_fit_without_validation_split(tmp_path, cli):
    code, out, err = cli("train", "--epochs", "2", "--train-size", "150", "--batch-size", "50",
                         "--val-fraction", "0", "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    assert "150 train / 0 val images" in out and "no val split" in out
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in rows] == [None, None] and rows[-1]["train_acc"] > 0
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1].split(",")[4] == ""
    assert (tmp_path / "run" / "accuracy.png").is_file() and not (tmp_path / "run" / "best_val.json").exists()
    best, last = _weights(tmp_path / "run" / "best.safetensors"), _weights(tmp_path / "run" / "last.safetensors")
    assert all(torch.equal(best[k], last[k]) for k in best)  # nothing to choose an epoch by: the last
    assert read_metadata(tmp_path / "run").epoch == 2
    code, out, err = cli("eval", tmp_path / "run", "--split", "test")
    assert code == 0 and "top-1" in out, err
    code, _, err = cli("eval", tmp_path / "run", "--split", "val")
    assert code != 0 and "no validation split" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-0.1"], "--lr must be a positive number"),
    (["--optimizer", "rmsprop"], "--optimizer must be one of"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--arch", "resnet"], "unknown architecture 'resnet'"),
    (["--epochs", "ten"], "expected a whole number"),
    (["--tta-shift", "5"], "--tta-shift must be 0 to 4 pixels"),
    (["--split-seed", "x"], "argument --split-seed: invalid int value"),
    (["--squeeze-ratio", "1.5"], "--squeeze-ratio must be in (0, 1]"),
    (["--pool-after", "conv1,fire10"], "--pool-after names layers from conv1, fire2 ... fire9"),
    (["--stem-channels", "0"], "--stem-channels must be at least 1"),
    (["--erase", "1.5"], "--erase must be a probability in [0, 1]"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["--muon-lr", "0"], "--muon-lr must be a positive number"),
    (["--muon-momentum", "1"], "--muon-momentum must be in [0, 1)"),
    (["--muon-ns-steps", "0"], "--muon-ns-steps must be at least 1"),
    (["--crop-pad", "0"], "--crop-pad must be at least 1 pixel"),
    (["--time-budget", "soon"], "expected a duration like 45m"),
    (["--time-budget", "0"], "--time-budget must be a positive duration"),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, cli, flags, message):
    code, _, err = cli("train", *flags, "--out", tmp_path / "run")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_data_dir_says_how_to_get_data(tmp_path, cli):
    code, _, err = cli("train", "--dataset", "folder", "--data-dir", tmp_path / "nope", "--out", tmp_path / "run")
    assert code == 1 and "does not exist" in err and "one sub-folder of images per class" in err
    assert not (tmp_path / "run").exists()
    code, _, err = cli("train", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "run")
    assert code == 1 and "CIFAR-10 train split not found" in err


def test_empty_class_folder(tmp_path, cli, image_folder):
    (image_folder / "bird").mkdir()
    code, _, err = cli("train", "--dataset", "folder", "--data-dir", image_folder, "--out", tmp_path / "run")
    assert code == 1 and "bird has no images" in err
    assert not (tmp_path / "run").exists()


def test_corrupt_image_warns_or_fails_with_strict(tmp_path, cli, image_folder):
    (image_folder / "dog" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    args = ["train", "--dataset", "folder", "--data-dir", image_folder, "--image-size", "32", "--small-input",
            "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--no-progress"]
    code, _, err = cli(*args, "--strict", "--out", tmp_path / "strict")
    assert code == 1 and "truncated.jpg" in err and not (tmp_path / "strict").exists()
    code, _, err = cli(*args, "--out", tmp_path / "lenient")
    assert code == 0 and "warning: skipped unreadable image" in err and "truncated.jpg" in err


def test_checkpoint_of_other_classes_or_arch(tmp_path, cli, trained_run):
    code, _, err = cli("eval", trained_run, "--dataset", "folder", "--data-dir", tmp_path / "none")
    assert code == 1 and "does not exist" in err
    from conftest import write_image_folder

    write_image_folder(tmp_path / "three", classes=("a", "b", "c"), size=32)
    code, _, err = cli("eval", trained_run, "--dataset", "folder", "--data-dir", tmp_path / "three")
    assert code == 1 and "the checkpoint has 10 classes" in err
    # weights of another architecture into a model: names the mismatched keys
    code, _, err = cli("train", "--arch", "squeezenet1_0", "--weights", trained_run / "best.safetensors",
                       "--epochs", "1", "--out", tmp_path / "x")
    assert code == 1 and "weights do not fit this architecture" in err and "features.0.weight" in err


def test_eval_of_a_non_checkpoint(tmp_path, cli):
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    code, _, err = cli("eval", tmp_path / "junk.safetensors")
    assert code == 1 and "not a safetensors checkpoint" in err
    code, _, err = cli("eval", tmp_path / "missing")
    assert code == 1 and "does not exist" in err


def test_existing_run_is_not_overwritten(trained_run, cli):
    code, _, err = cli("train", "--out", trained_run)
    assert code == 1 and "--resume" in err


# ----------------------------------------------------------------------------- configuration

def test_config_file_then_flags_override_it(tmp_path, cli):
    (tmp_path / "c.toml").write_text('epochs = 1\ntrain-size = 96\nbatch_size = 32\nlr = 0.05\nseed = 3\n')
    code, out, err = cli("train", "--config", tmp_path / "c.toml", "--lr", "0.02", "--out", tmp_path / "a",
                         "--no-progress")
    assert code == 0, err
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["epochs"], saved["train_size"], saved["seed"], saved["lr"]) == (1, 96, 3, 0.02)
    # a run's own config.json starts a new run with the same settings (not its --out)
    code, out, err = cli("train", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b", "--no-progress")
    assert code == 0, err
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {k: v for k, v in again.items() if k != "out"} == {k: v for k, v in saved.items() if k != "out"}
    (tmp_path / "bad.toml").write_text("epochs = 1\nlearning_rate = 3\n")
    code, _, err = cli("train", "--config", tmp_path / "bad.toml", "--out", tmp_path / "c")
    assert code == 2 and "unknown setting(s) learning_rate" in err and not (tmp_path / "c").exists()
    (tmp_path / "old.json").write_text(json.dumps({"epochs": 1, "lookahead": 5}))
    code, _, err = cli("train", "--config", tmp_path / "old.json", "--out", tmp_path / "c")
    assert code == 2 and "--lookahead" in err and "removed" in err


def test_a_recipe_alone_is_its_results_row():
    """The README's rows are the recipes with no other flag: budget and final fit included."""
    fm, c10 = make_config({"recipe": "fashion-mnist"}), make_config({"recipe": "cifar10"})
    assert (fm.time_budget, fm.val_fraction) == (870.0, 0.0)
    assert (c10.time_budget, c10.val_fraction) == (2670.0, 0.0)
    # a length in epochs replaces the recipe's budget; a budget of "off" does too
    assert make_config({"recipe": "cifar10", "epochs": 3}).time_budget is None
    assert make_config({"recipe": "cifar10", "time_budget": "off"}).time_budget is None


def test_quiet_and_verbose(tmp_path, cli):
    args = ["train", "--epochs", "1", "--train-size", "64", "--batch-size", "32", "--no-progress"]
    code, out, err = cli("--quiet", *args, "--out", tmp_path / "q")
    assert code == 0 and out == "", out
    code, out, _ = cli(*args, "--out", tmp_path / "n")
    assert code == 0 and "epoch   1/1" in out


def test_tensorboard_logs_each_epoch(tmp_path, cli):
    pytest.importorskip("tensorboard")
    code, _, err = cli("train", "--epochs", "2", "--train-size", "64", "--batch-size", "32", "--tensorboard",
                       "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2]
    assert "val_acc" in events.Tags()["scalars"]
