"""Case discovery on every BraTS layout (tiny NIfTI in a temp dir, and the real sample case)."""

from __future__ import annotations

import pytest

from rirn.data.discovery import (
    check_release,
    detect_release,
    discover_cases,
    read_case_folder,
    release_scheme,
)
from rirn.data.modalities import MODALITIES
from rirn.errors import DataError
from tests.brats_fixtures import (
    LAYOUTS,
    MISNAMED_SEG,
    SAMPLE_CASE,
    SAMPLE_ROOT,
    file_name,
    make_dataset,
    synthetic_case,
    write_case,
    write_nifti,
)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_each_layout_is_detected_and_listed(tmp_path, layout, ext):
    root, ids = make_dataset(tmp_path / "data", layout, n_cases=3, ext=ext)
    index = discover_cases(root)
    assert index.release == layout
    assert index.scheme == ("brats2023" if layout == "brats2023" else "brats")
    assert index.case_ids == ids == sorted(ids)
    for case in index.cases:
        assert case.folder.name == case.case_id
        assert list(case.images) == list(MODALITIES)
        for m, path in case.images.items():
            assert path.name == file_name(case.case_id, m, layout, ext)
        assert case.seg.name == file_name(case.case_id, "seg", layout, ext)


def test_nested_layout_mixes_hgg_and_lgg_sorted(tmp_path):
    root, ids = make_dataset(tmp_path, "brats2018", n_cases=4)
    index = discover_cases(root)
    assert {c.folder.parent.name for c in index.cases} == {"HGG", "LGG"}
    assert index.case_ids == sorted(ids)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forced_release_is_kept(tmp_path, layout):
    root, _ = make_dataset(tmp_path, layout, n_cases=1)
    assert discover_cases(root, release=layout).release == layout
    assert discover_cases(root, release=layout[-4:]).release == layout  # "2021" works too


def test_forced_release_of_other_naming_fails(tmp_path):
    root, _ = make_dataset(tmp_path, "brats2021", n_cases=1)
    with pytest.raises(DataError, match="brats2023 was given .* look like brats2021"):
        discover_cases(root, release="brats2023")
    with pytest.raises(DataError, match="expects HGG/ and LGG/"):
        discover_cases(root, release="brats2018")
    with pytest.raises(DataError, match="unknown release 'brats1999'"):
        discover_cases(root, release="brats1999")


def test_release_names_and_schemes():
    assert check_release("BraTS2020") == "brats2020"
    assert check_release("auto") == "auto"
    assert [release_scheme(r) for r in ("brats2018", "brats2021", "brats2023")] == [
        "brats",
        "brats",
        "brats2023",
    ]


def test_brats2020_quirks_seg_nii_and_misnamed_seg(tmp_path):
    root, ids = make_dataset(tmp_path, "brats2020", n_cases=3, quirks=True)
    index = discover_cases(root)
    assert index.release == "brats2020"
    segs = {c.case_id: c.seg.name for c in index.cases}
    assert segs[ids[0]] == f"{ids[0]}_seg.nii"
    assert segs[ids[-1]] == MISNAMED_SEG
    assert segs[ids[1]] == f"{ids[1]}_seg.nii.gz"


def test_modality_names_are_case_insensitive(tmp_path):
    images, seg = synthetic_case()
    folder = tmp_path / "Case_A"
    for m, upper in zip(MODALITIES, ["FLAIR", "T1", "T1CE", "T2"], strict=True):
        write_nifti(folder / f"Case_A_{upper}.nii.gz", images[m])
    write_nifti(folder / "Case_A_SEG.NII.GZ", seg)
    case = read_case_folder(folder, require_seg=True)
    assert {m: p.name for m, p in case.images.items()} == {
        "flair": "Case_A_FLAIR.nii.gz",
        "t1": "Case_A_T1.nii.gz",
        "t1ce": "Case_A_T1CE.nii.gz",
        "t2": "Case_A_T2.nii.gz",
    }
    assert case.seg.name == "Case_A_SEG.NII.GZ"


def test_missing_modality_names_the_expected_file(tmp_path):
    root, ids = make_dataset(tmp_path / "data", "brats2021", n_cases=2)
    (root / ids[1] / f"{ids[1]}_t1ce.nii.gz").unlink()
    with pytest.raises(DataError) as err:
        discover_cases(root)
    msg = str(err.value)
    assert ids[1] in msg and "t1ce" in msg and f"{ids[1]}_t1ce.nii.gz" in msg
    assert "\n" not in msg


def test_missing_modality_2023_names_the_new_file_name(tmp_path):
    folder = write_case(tmp_path / "BraTS-GLI-00001-000", "brats2023", skip=("flair",))
    with pytest.raises(DataError, match="BraTS-GLI-00001-000-t2f.nii.gz"):
        read_case_folder(folder)


def test_missing_seg_allowed_only_without_require_seg(tmp_path):
    root, ids = make_dataset(tmp_path / "data", "brats2021", n_cases=2)
    (root / ids[0] / f"{ids[0]}_seg.nii.gz").unlink()
    with pytest.raises(DataError, match=f"{ids[0]}.*missing segmentation.*{ids[0]}_seg.nii.gz"):
        discover_cases(root)
    index = discover_cases(root, require_seg=False)
    assert index.case(ids[0]).seg is None
    assert index.case(ids[1]).seg is not None


def test_read_case_folder_with_a_subset(tmp_path):
    folder = write_case(tmp_path / "BraTS2021_00001", "brats2021", skip=("t1", "t2", "seg"))
    case = read_case_folder(folder, modalities=["T1c", "fl"])
    assert list(case.images) == ["flair", "t1ce"]
    assert case.seg is None
    with pytest.raises(DataError, match=r"missing modality file\(s\) t1\+t2 .*BraTS2021_00001_t1"):
        read_case_folder(folder, modalities=["t2", "t1", "t1ce"])
    with pytest.raises(DataError, match="does not exist"):
        read_case_folder(tmp_path / "nope")


def test_duplicate_files_and_ids_are_errors(tmp_path):
    root, ids = make_dataset(tmp_path / "a", "brats2018", n_cases=2)
    dup = root / "LGG" / ids[0]
    write_case(dup, "brats2018")
    with pytest.raises(DataError, match=f"case {ids[0]} in"):
        discover_cases(root)
    folder = write_case(tmp_path / "b" / "C1", "brats2021")
    write_nifti(folder / "C1_t1.nii", synthetic_case()[0]["t1"])
    with pytest.raises(DataError, match="several t1 files"):
        read_case_folder(folder)


def test_empty_or_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover_cases(tmp_path / "missing")
    (tmp_path / "empty" / "not_a_case").mkdir(parents=True)
    (tmp_path / "empty" / "notes.csv").write_text("x")
    with pytest.raises(DataError, match="no case folders"):
        discover_cases(tmp_path / "empty")


def test_stray_files_and_folders_are_ignored(tmp_path):
    root, ids = make_dataset(tmp_path, "brats2020", n_cases=2)
    (root / "name_mapping.csv").write_text("a,b\n")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ids[0] / "README.txt").write_text("x")
    assert discover_cases(root).case_ids == ids
    assert detect_release(root) == "brats2020"


def test_real_sample_case():
    if not (SAMPLE_ROOT / SAMPLE_CASE).is_dir():
        pytest.skip("shared/data/brats2021-sample not present")
    index = discover_cases(SAMPLE_ROOT)
    assert index.release == "brats2021" and index.scheme == "brats"
    assert index.case_ids == [SAMPLE_CASE]
    case = index.cases[0]
    assert {m: p.name for m, p in case.images.items()} == {
        m: f"{SAMPLE_CASE}_{m}.nii.gz" for m in MODALITIES
    }
    assert case.seg.name == f"{SAMPLE_CASE}_seg.nii.gz"
