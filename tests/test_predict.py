"""python -m rirn.predict: NIfTI I/O (shape, affine, header, dtype, labels), values against an
independent forward pass, naming, 2023 labels, missing modalities. Uses the smoke run of
tests/test_evaluate.py (trained once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from rirn.data.discovery import read_case_folder
from rirn.data.io import preprocess_case
from rirn.errors import DataError
from rirn.evaluation.runs import open_checkpoint
from rirn.inference import sliding_window_inference
from rirn.labels import get_scheme, regions_to_labels
from rirn.predict import run as predict

from .conftest import REPO, SAMPLE, compose_config, run_cli
from .test_evaluate import smoke_run_dir

HEADER_FIELDS = ("dim", "pixdim", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z",
                 "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
                 "xyzt_units")  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(cache_root) -> Path:
    return smoke_run_dir(cache_root) / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def synth_root(checkpoint, cache_root) -> Path:
    (root,) = (cache_root / "synthetic").glob("*/synthetic.json")
    return root.parent


def _predict(checkpoint: Path, input_dir: Path, output: Path, *extra: str) -> list[Path]:
    overrides = [f"checkpoint={checkpoint}", f"input={input_dir}", f"output={output}"]
    return predict(compose_config("predict", ["progress=false", *overrides, *extra]))


def _assert_like(pred_path: Path, reference: Path) -> np.ndarray:
    """The prediction has the reference's shape, affine and header geometry; uint8 labels."""
    pred, ref = nib.load(pred_path), nib.load(reference)
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(pred.affine, ref.affine)
    for key in HEADER_FIELDS:
        np.testing.assert_array_equal(pred.header[key], ref.header[key], err_msg=key)
    assert pred.get_data_dtype() == np.uint8
    labels = np.asarray(pred.dataobj)
    assert labels.dtype == np.uint8
    return labels


def _copy_case(src: Path, dst_root: Path, modalities: list[str], rename=None) -> Path:
    dst = dst_root / src.name
    dst.mkdir(parents=True)
    for m in modalities:
        name = f"{src.name}_{m}.nii.gz"
        shutil.copy(src / name, dst / (rename(m) if rename else name))
    return dst


def test_predict_synthetic_case_matches_forward_pass(checkpoint, synth_root, tmp_path):
    folder = synth_root / "Synth_000"  # it also holds a seg file, which must be ignored
    (path,) = _predict(checkpoint, folder, tmp_path)
    assert path == tmp_path / "Synth_000_pred.nii.gz"
    labels = _assert_like(path, folder / "Synth_000_t1ce.nii.gz")
    assert set(np.unique(labels)) <= {0, 1, 2, 4}

    # Independent recomputation: only T1ce read, its own brain box, sliding window.
    case = read_case_folder(folder, ("t1ce",))
    image, _, meta = preprocess_case(case, "brats2021", "brats")
    net = open_checkpoint(checkpoint).network("student")
    probs = sliding_window_inference(net, torch.from_numpy(image[[2]])[None], (32, 32, 32))
    full = np.zeros((3, *meta["shape"]), bool)
    full[(slice(None), *(slice(lo, hi) for lo, hi in meta["bbox"]))] = probs[0].numpy() > 0.5
    np.testing.assert_array_equal(labels, regions_to_labels(full, get_scheme("brats")))


def test_predict_folder_of_cases_naming_and_2023_labels(checkpoint, synth_root, tmp_path):
    inputs = tmp_path / "in"
    for cid in ("Synth_001", "Synth_002"):
        _copy_case(synth_root / cid, inputs, ["t1ce", "t2"])
    centre = "inference.mode=center_crop"
    paths = _predict(checkpoint, inputs, tmp_path / "out", "naming=brats", centre)
    assert [p.name for p in paths] == ["Synth_001.nii.gz", "Synth_002.nii.gz"]
    classic = np.asarray(nib.load(paths[0]).dataobj)

    # The same case named the 2023 way: same masks, ET written as 3 instead of 4.
    new = {"t1ce": "t1c", "t2": "t2w"}
    _copy_case(synth_root / "Synth_001", tmp_path / "in23", ["t1ce", "t2"],
               rename=lambda m: f"Synth_001-{new[m]}.nii.gz")  # fmt: skip
    (path23,) = _predict(checkpoint, tmp_path / "in23", tmp_path / "out23", centre)
    labels23 = np.asarray(nib.load(path23).dataobj)
    assert set(np.unique(labels23)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(labels23, np.where(classic == 4, 3, classic))


def test_missing_modality_names_case_and_files(checkpoint, synth_root, tmp_path):
    folder = _copy_case(synth_root / "Synth_003", tmp_path / "in", ["t1", "t2"])
    with pytest.raises(DataError) as err:
        _predict(checkpoint, folder, tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith("case Synth_003 ")
    assert "needs t1ce (Synth_003_t1ce.nii.gz or Synth_003-t1c.nii.gz), found only: t1, t2" in msg
    assert not (tmp_path / "out").exists()  # checked before any prediction

    # model=teacher (renamed to network=teacher before Hydra parses it) needs all four.
    args = ["-m", "rirn.predict", f"checkpoint={checkpoint}", f"input={folder}", "output=x"]
    result = run_cli([*args, "model=teacher"], cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: case Synth_003 ")
    assert "needs flair (Synth_003_flair.nii.gz or Synth_003-t2f.nii.gz) and t1ce (" in line
    assert line.endswith("found only: t1, t2")


def test_an_all_zero_input_the_model_needs_is_refused(checkpoint, synth_root, tmp_path):
    """A zero-filled placeholder normalises to zeros: segmenting without it must not pass
    silently (a bundle skips such files; one checkpoint cannot)."""
    four = ["flair", "t1", "t1ce", "t2"]
    folder = _copy_case(synth_root / "Synth_004", tmp_path / "in", four)
    t2 = folder / "Synth_004_t2.nii.gz"
    img = nib.load(t2)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine, img.header), t2)
    with pytest.raises(DataError, match=r"case Synth_004: t2 is all zeros \(Synth_004_t2"):
        _predict(checkpoint, folder, tmp_path / "out", "network=teacher")
    # the T1ce student does not read T2: it segments the case
    assert len(_predict(checkpoint, folder, tmp_path / "out2")) == 1


def test_a_folder_of_several_cases_names_the_duplicate_files(checkpoint, synth_root, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for cid in ("Synth_000", "Synth_001"):
        shutil.copy(synth_root / cid / f"{cid}_t1ce.nii.gz", flat)
    with pytest.raises(DataError, match="several t1ce files"):
        _predict(checkpoint, flat, tmp_path / "out")


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="BraTS 2021 sample case not present")
def test_predict_real_sample_keeps_geometry(checkpoint, tmp_path):
    # A synthetic-trained smoke model: only the I/O is checked. One 64^3 centre window keeps the
    # 240x240x155 case within a few seconds on a CPU.
    extra = ("inference.mode=center_crop", "inference.roi_size=[64,64,64]")
    (path,) = _predict(checkpoint, SAMPLE, tmp_path, *extra)
    case = SAMPLE / "BraTS2021_00006"
    assert path == tmp_path / "BraTS2021_00006_pred.nii.gz"
    labels = _assert_like(path, case / "BraTS2021_00006_t1ce.nii.gz")
    assert labels.shape == (240, 240, 155)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
