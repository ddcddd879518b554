import json
import subprocess
import sys


def test_info_reports_paper_multiply_adds(cli, tmp_path):
    for arch, gmacs, params in (("squeezenet1_0", "0.819", "1,248,424"), ("squeezenet1_1", "0.349", "1,235,496")):
        code, out, _ = cli("info", arch, "--json", tmp_path / f"{arch}.json")
        assert code == 0
        assert f"multiply-adds {gmacs} G" in out and params in out
        assert "fewer parameters" in out and "fire9" in out
        summary = json.loads((tmp_path / f"{arch}.json").read_text())
        assert round(summary["macs"] / 1e9, 3) == float(gmacs)


def test_info_layer_table(cli):
    code, out, _ = cli("info", "squeezenet1_1", "--input-size", "32", "--num-classes", "10", "--small-input")
    assert code == 0
    assert "512x4x4" in out  # fire9 sees 4x4 at 32 px with the small stem
    assert "minimum input 8x8" in out


def test_info_unknown_arch_lists_valid_ones(cli):
    code, _, err = cli("info", "alexnet")
    assert code == 2
    assert "unknown architecture 'alexnet'" in err and "squeezenet1_1" in err


def test_info_below_minimum_names_minimum(cli):
    code, _, err = cli("info", "squeezenet1_0", "--input-size", "16")
    assert code == 2 and "minimum input size 21" in err


def test_module_entry_point_without_traceback():
    r = subprocess.run([sys.executable, "-m", "squeezenet", "info", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown architecture" in r.stderr


def test_reader_closing_the_pipe_early_is_not_a_crash(tmp_path):
    # `squeezenet info ... | head -1`: the results file is still written, and no traceback.
    out = tmp_path / "info.json"
    r = subprocess.run(f"{sys.executable} -m squeezenet info squeezenet1_0 --json {out} | head -c 1",
                       shell=True, capture_output=True, text=True)
    assert "Traceback" not in r.stderr and "Error" not in r.stderr
    assert json.loads(out.read_text())["macs"] > 0


def test_info_describes_a_recipe_model_and_a_checkpoint(cli, trained_run, tmp_path):
    code, out, err = cli("info", "--recipe", "cifar10", "--json", tmp_path / "r.json")
    assert code == 0, err
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["params"] == 1_449_034 and summary["input_size"] == 32  # SR 0.25, 10 classes
    assert "squeeze_ratio=0.25" in out and "pool_after=conv1,fire3,fire7" in out
    code, out, err = cli("info", "squeezenet1_1", "--squeeze-ratio", "0.25", "--num-classes", "10", "--batch-norm")
    assert code == 0 and "1,449,034" in out, err
    code, out, err = cli("info", trained_run, "--json", tmp_path / "c.json")
    assert code == 0, err
    assert "trained on shapes (10 classes" in out and "32x32" in out
    assert json.loads((tmp_path / "c.json").read_text())["checkpoint"]["arch"] == "squeezenet1_1"
