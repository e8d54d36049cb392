"""python -m rirn.predict bundle=...: per case the student of the modalities it has, masks and
probabilities against an independent forward pass of that student, predictions.csv rows, cases
that fail alone, exit status, refused bundles. Random tiny students (tests/bundle_fixtures.py),
on small fake cases and on the real BraTS 2021 sample case (skipped when absent)."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from rirn.data.discovery import read_case_folder
from rirn.data.io import preprocess_case
from rirn.data.modalities import MODALITIES, channel_indices, parse_modalities
from rirn.errors import CasesFailed, ConfigError, DataError
from rirn.inference import center_crop_inference, sliding_window_inference
from rirn.labels import get_scheme, regions_to_labels
from rirn.models import build_unet
from rirn.predict import run as predict

from .brats_fixtures import synthetic_case
from .bundle_fixtures import STUDENTS, TINY_MODEL, make_bundle, student_state
from .conftest import REPO, SAMPLE, compose_config, run_cli

NEW = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
#: case -> what to do with each modality file (absent: deleted).
CASES: dict[str, dict[str, str]] = {
    "all4": dict.fromkeys(MODALITIES, "copy"),
    "t1ce_only": {"t1ce": "copy"},
    "flair_t2_zero_t1ce": {"flair": "copy", "t2": "copy", "t1ce": "zeros"},
    "new_names": {"flair": "2023", "t2": "2023"},
    "t1ce_t2": {"t1ce": "copy", "t2": "copy"},
    "flair_t1_bad_t2": {"flair": "copy", "t1": "copy", "t2": "corrupt"},
    "nothing": {"t1ce": "zeros", "t2": "corrupt", "flair": "zeros"},
}
#: case -> (status, available, model_subset, choice, text in "ignored")
EXPECTED = {
    "all4": ("ok", "flair+t1+t1ce+t2", "t1+t1ce+t2", "sub-subset", ""),
    "flair_t1_bad_t2": ("failed", "flair+t1", "", "none", "t2: "),
    "flair_t2_zero_t1ce": ("ok", "flair+t2", "flair+t2", "exact", "t1ce: all zeros"),
    "new_names": ("ok", "flair+t2", "flair+t2", "exact", ""),
    "nothing": ("failed", "", "", "none", "flair: all zeros"),
    "t1ce_only": ("ok", "t1ce", "t1ce", "exact", ""),
    "t1ce_t2": ("ok", "t1ce+t2", "t1ce", "sub-subset", ""),
}
#: A voxel of 1.5 x 1 x 2 mm = 0.003 mL, so the volumes must use the header's voxel size.
AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])


def _fake_source(root: Path) -> Path:
    """A small fake case with the BraTS 2021 names and non-unit voxels."""
    images, _ = synthetic_case((24, 24, 16), seed=3)
    folder = root / "Fake_001"
    folder.mkdir(parents=True)
    for m, array in images.items():
        nib.save(nib.Nifti1Image(array, AFFINE), str(folder / f"Fake_001_{m}.nii.gz"))
    return folder


def _build_inputs(source: Path, root: Path, cases=tuple(CASES)) -> Path:
    """The case folders ``cases`` of :data:`CASES` made from one source case folder."""
    sid = source.name
    for case in cases:
        plan = CASES[case]
        folder = root / case
        folder.mkdir(parents=True)
        for m, action in plan.items():
            src = source / f"{sid}_{m}.nii.gz"
            dst = folder / (f"{case}-{NEW[m]}.nii.gz" if action == "2023" else f"{case}_{m}.nii.gz")
            if action in ("copy", "2023"):
                shutil.copy(src, dst)
            elif action == "zeros":
                ref = nib.load(str(src))
                zeros = np.zeros(ref.shape, dtype=ref.get_data_dtype())
                nib.save(nib.Nifti1Image(zeros, ref.affine, ref.header), str(dst))
            else:  # a truncated copy: gzip fails part-way
                dst.write_bytes(src.read_bytes()[:2000])
    return root


def _student(subset: str) -> torch.nn.Module:
    """The student of the bundle rebuilt from its seed (not from the bundle)."""
    net = build_unet(TINY_MODEL, len(parse_modalities(subset)))
    net.load_state_dict(student_state(subset, STUDENTS[subset][0]))
    return net.eval()


def _expected_probs(folder: Path, available: str, subset: str, roi, centre: bool) -> tuple:
    """Probabilities ``(3, *S)`` of ``subset``'s student: the case preprocessed from its
    ``available`` files, a direct window pass, pasted into the volume by hand."""
    case = read_case_folder(folder, parse_modalities(available))
    image, _, meta = preprocess_case(case, "brats2021", "brats")
    x = torch.from_numpy(image[channel_indices(parse_modalities(subset))])[None]
    net = _student(subset)
    if centre:
        probs = center_crop_inference(net, x, roi)[0].numpy()
    else:
        probs = sliding_window_inference(net, x, roi, overlap=0.5, batch_size=4)[0].numpy()
    full = np.zeros((3, *meta["shape"]), np.float32)
    full[(slice(None), *(slice(lo, hi) for lo, hi in meta["bbox"]))] = probs
    return full, case.images[parse_modalities(subset)[0]]


def _rows(out: Path) -> dict[str, dict]:
    with (out / "predictions.csv").open(newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def _check_run(inputs: Path, bundle: Path, out: Path, extra: list[str], roi, centre, capsys):
    cases = sorted(p.name for p in inputs.iterdir())
    failed = [c for c in cases if EXPECTED[c][0] == "failed"]
    overrides = [f"bundle={bundle}", f"input={inputs}", f"output={out}", *extra]
    with pytest.raises(CasesFailed) as err:
        predict(compose_config("predict", overrides))
    assert str(err.value).startswith(
        f"{len(failed)} of {len(cases)} case(s) failed ({', '.join(failed)})"
    )
    captured = capsys.readouterr()
    assert "case all4: model t1+t1ce+t2 (sub-subset: no flair+t1+t1ce+t2 student;" in captured.out
    assert "case t1ce_only: model t1ce (exact), WT " in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors[-1] == "error: case nothing (no usable modality): no usable modality"
    if "flair_t1_bad_t2" in cases:
        assert errors[0].startswith("error: case flair_t1_bad_t2 (flair+t1 available): no student")
    assert len(errors) == len(failed)  # one line per failed case

    rows = _rows(out)
    assert list(rows) == cases  # one row per case, failed ones included
    if "t1ce_t2" in rows:
        assert rows["t1ce_t2"]["reason"] == (
            "no t1ce+t2 student; largest available sub-subset t1ce "
            "(validation mean 0.6000; tie with t2 0.5500)"
        )
    assert rows["t1ce_only"]["reason"] == "exact: the student of the available modalities"
    classic = None
    for case in cases:
        status, available, used, choice, ignored = EXPECTED[case]
        row = rows[case]
        got = (row["status"], row["available"], row["model_subset"], row["choice"])
        assert got == (status, available, used, choice), case
        assert ignored in row["ignored"]
        assert float(row["seconds"]) >= 0
        if status == "failed":
            assert row["mask"] == "" and row["wt_ml"] == "" and row["error"]
            assert not (out / f"{case}_pred.nii.gz").exists()
            continue
        assert float(row["seconds"]) > 0  # reading and predicting take time
        probs, reference = _expected_probs(inputs / case, available, used, roi, centre)
        scheme = get_scheme("brats2023" if case == "new_names" else "brats")
        expected = regions_to_labels(probs > 0.5, scheme)
        mask = nib.load(out / row["mask"])
        ref = nib.load(reference)
        assert mask.shape == ref.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(mask.affine, ref.affine)
        labels = np.asarray(mask.dataobj)
        np.testing.assert_array_equal(labels, expected, err_msg=case)
        voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000
        for region, values in (("wt", (1, 2, 4, 3)), ("tc", (1, 4, 3)), ("et", (scheme.et,))):
            volume = np.isin(labels, values).sum() * voxel_ml
            assert float(row[f"{region}_ml"]) == pytest.approx(volume, abs=6e-4), (case, region)
        if case == "flair_t2_zero_t1ce":
            classic = labels
        if "save_probabilities=true" in extra and case == "all4":
            stored = nib.load(out / "all4_prob.nii.gz")
            assert stored.get_data_dtype() == np.int16 and stored.shape == (*ref.shape, 3)
            np.testing.assert_array_equal(stored.affine, ref.affine)
            values = np.moveaxis(np.asarray(stored.dataobj, dtype=np.float64), -1, 0)
            np.testing.assert_allclose(values, probs, atol=1 / 32767 + 1e-6)
    # The 2023-named flair+t2 case is the zero-t1ce case renamed: same masks, ET written as 3.
    labels23 = np.asarray(nib.load(out / "new_names_pred.nii.gz").dataobj)
    assert set(np.unique(labels23)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(labels23, np.where(classic == 4, 3, classic))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def test_bundle_predict_fake_cases(bundle, tmp_path, capsys):
    inputs = _build_inputs(_fake_source(tmp_path / "src"), tmp_path / "in")
    extra = ["save_probabilities=true", "progress=false"]
    _check_run(inputs, bundle, tmp_path / "out", extra, (16, 16, 16), False, capsys)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="BraTS 2021 sample case not present")
def test_bundle_predict_brats2021_sample(bundle, tmp_path, capsys):
    # Random tiny students: the I/O, the choice and the CSV are checked, not the segmentation.
    # One 32^3 centre window per case keeps the 240x240x155 cases to seconds on a CPU.
    # The cases of the fake test that only the choice tells apart are left to it.
    cases = ("all4", "t1ce_only", "flair_t2_zero_t1ce", "new_names", "nothing")
    inputs = _build_inputs(SAMPLE / "BraTS2021_00006", tmp_path / "in", cases)
    extra = ["inference.mode=center_crop", "inference.roi_size=[32,32,32]"]
    _check_run(inputs, bundle, tmp_path / "out", extra, (32, 32, 32), True, capsys)

    # A tampered weights file is refused before any case is read.
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    weights = tampered / "students" / "flair+t2.pt"
    weights.write_bytes(weights.read_bytes()[:-1])
    overrides = [f"bundle={tampered}", f"input={inputs}", f"output={tmp_path / 'out2'}"]
    with pytest.raises(DataError, match="flair\\+t2.pt does not match its sha256"):
        predict(compose_config("predict", overrides))
    assert not (tmp_path / "out2").exists()


def test_tampered_bundle_refused_and_exit_codes(bundle, tmp_path):
    inputs = _build_inputs(_fake_source(tmp_path / "src"), tmp_path / "in")
    good = ["-m", "rirn.predict", f"bundle={bundle}", f"input={inputs}"]
    result = run_cli([*good, f"output={tmp_path / 'out'}"], cwd=REPO)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 of 7 case(s) failed")
    assert "5 mask(s) written" in result.stdout

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    weights = tampered / "students" / "t1ce.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    args = ["-m", "rirn.predict", f"bundle={tampered}", f"input={inputs}"]
    result = run_cli([*args, f"output={tmp_path / 'out2'}"], cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"error: bundle file {weights} does not match its sha256 in manifest.json "
        "(changed or corrupt); refusing the bundle"
    )
    assert not (tmp_path / "out2").exists()


def test_bundle_options_are_checked(bundle, tmp_path):
    base = [f"input={tmp_path}", f"output={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match="exactly one of checkpoint or bundle is required"):
        predict(compose_config("predict", base))
    both = [f"bundle={bundle}", f"checkpoint={bundle / 'x.pt'}", *base]
    with pytest.raises(ConfigError, match="got checkpoint and bundle"):
        predict(compose_config("predict", both))
    with pytest.raises(ConfigError, match="model=teacher but bundle .* has no teacher"):
        predict(compose_config("predict", [f"bundle={bundle}", "network=teacher", *base]))
    with pytest.raises(DataError, match="no case folder"):
        predict(compose_config("predict", [f"bundle={bundle}", *base]))


def test_gzip_truncation_is_what_the_corrupt_cases_use(tmp_path):
    # Guard for the fixtures above: the truncated copy really is unreadable as NIfTI.
    src = _fake_source(tmp_path) / "Fake_001_t2.nii.gz"
    bad = tmp_path / "bad_t2.nii.gz"
    bad.write_bytes(src.read_bytes()[:2000])
    with pytest.raises((EOFError, OSError, gzip.BadGzipFile)):
        gzip.decompress(bad.read_bytes())
