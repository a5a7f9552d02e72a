"""`bfrboost eval`, `eval stats` and `eval boost` end to end on real aligned faces (CliRunner)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.evaluation.boost import BoostReport, BoostRow, better_of, format_value, run_boost
from bfrboost.evaluation.evaluator import MetricModels
from bfrboost.metrics import MetricValue
from bfrboost.metrics.inception import ReferenceStats, kid

runner = CliRunner()


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


@pytest.fixture
def paired(tmp_path, aligned_faces) -> tuple[Path, Path]:
    """Three HQ faces and degraded (down ×4, JPEG 30, up) copies with the same names."""
    hq, lq = tmp_path / "hq", tmp_path / "lq"
    for i, face in enumerate(aligned_faces[:3]):
        small = cv2.resize(face, (128, 128), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])
        degraded = cv2.resize(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1], (512, 512), interpolation=cv2.INTER_CUBIC)
        _save(hq / f"{i:04d}.png", face)
        _save(lq / f"{i:04d}.png", np.ascontiguousarray(degraded))
    return lq, hq


def test_eval_identical_folders(paired, niqe_file, arcface_file):
    _, hq = paired
    result = runner.invoke(
        app,
        ["eval", "--restored", str(hq), "--reference", str(hq), "--metrics", "psnr,ssim,ids,niqe", "--device", "cpu", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics = report["metrics"]
    assert report["images"] == 3 and report["pairs"] == 3
    assert metrics["psnr"]["value"] == "inf" and metrics["ssim"]["value"] == pytest.approx(1.0)
    assert metrics["ids"]["value"] == pytest.approx(1.0, abs=1e-5) and metrics["ids"]["better"] == "higher"
    assert metrics["niqe"]["better"] == "lower" and metrics["niqe"]["value"] > 0


def test_eval_without_reference_skips_paired_metrics_with_a_line(paired):
    lq, _ = paired
    result = runner.invoke(app, ["eval", "--restored", str(lq), "--metrics", "psnr", "--device", "cpu"])
    assert result.exit_code == 0
    assert (
        "bfrboost: psnr: skipped, it compares each face with its reference: pass --reference HQ_DIR (files matched by name)"
        in result.stderr
    )


def test_eval_reports_a_bad_file_and_goes_on(paired):
    lq, hq = paired
    (lq / "9999.png").write_bytes(b"not an image")
    result = runner.invoke(
        app, ["eval", "--restored", str(lq), "--reference", str(hq), "--metrics", "psnr", "--device", "cpu", "--json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["pairs"] == 3
    assert re.search(r"9999\.png: .*\n", result.stderr)


def test_eval_missing_weights_is_one_line_naming_the_command(paired):
    lq, hq = paired
    result = runner.invoke(app, ["eval", "--restored", str(lq), "--reference", str(hq), "--metrics", "ids", "--device", "cpu"])
    assert result.exit_code == 1
    assert (
        result.stderr
        == "bfrboost: recognition_arcface_ir_se50.pth: the IDS weights are not in the cache; "
        "run `bfrboost weights download arcface`\n"
    )


def test_eval_usage_errors(paired, tmp_path):
    lq, _ = paired
    assert runner.invoke(app, ["eval"]).exit_code == 2
    result = runner.invoke(app, ["eval", "--restored", str(lq), "--metrics", "fid,sharpness"])
    assert result.exit_code == 2 and "unknown metric 'sharpness'" in result.stderr
    result = runner.invoke(app, ["eval", "--restored", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such file or folder" in result.stderr


def test_eval_stats_then_kid_against_them(paired, inception_file, tmp_path):
    _, hq = paired
    out = tmp_path / "ffhq.npz"
    result = runner.invoke(app, ["eval", "stats", str(hq), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    stats = ReferenceStats.load(out)
    assert stats.count == 3 and stats.mu.shape == (2048,) and stats.size == 512
    again = runner.invoke(app, ["eval", "stats", str(hq), "-o", str(out)])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.stderr
    # KID against the saved statistics: the same faces give the KID of the stored features with themselves
    result = runner.invoke(
        app, ["eval", "--restored", str(hq), "--reference-stats", str(out), "--metrics", "kid", "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["kid"]["value"] == pytest.approx(kid(stats.features, stats.features), abs=1e-6)


# ---- boost ---------------------------------------------------------------------------------------


def test_better_follows_each_metric_direction():
    assert better_of("fid", 40.0, 35.0) == "with" and better_of("fid", 35.0, 40.0) == "without"
    assert better_of("psnr", 25.0, 26.0) == "with" and better_of("ids", 0.8, 0.7) == "without"
    assert better_of("niqe", 5.0, 5.0) == "tie" and better_of("lpips", None, 0.2) == ""
    assert BoostRow("gfpgan", "kid", 0.05, 0.04).difference == pytest.approx(-0.01)


def _numbers(cells: list[str]) -> list[str]:
    return [c.replace("*", "").strip() for c in cells]


@pytest.fixture(scope="module")
def tiny_refiner(tmp_path_factory) -> Path:
    from bfrboost.refiner import init_tiny

    folder = tmp_path_factory.mktemp("refiner") / "tiny"
    init_tiny(folder, seed=0)
    return folder


def test_boost_writes_tables_that_agree(paired, tiny_refiner, inception_file, niqe_file, arcface_file, tmp_path):
    lq, hq = paired
    out = tmp_path / "boost"
    metrics = ["fid", "kid", "niqe", "psnr", "ssim", "ids"]
    report = run_boost(
        ["none"],
        tiny_refiner,
        lq,
        out,
        reference=hq,
        metrics=metrics,
        device="cpu",
        models=MetricModels("cpu", inception_feature="64"),
        batch_size=3,
    )
    assert set(report.files) == {"boost.md", "boost.csv", "boost.json", "boost.png", "index.html"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in report.files.values())
    data = json.loads((out / "boost.json").read_text())
    rows = {(r["base"], r["metric"]): r for r in data["rows"]}
    assert len(rows) == len(metrics) and data["faces"] == 3 and data["pairs"] == 3
    with open(out / "boost.csv") as f:
        csv_rows = list(csv.DictReader(f))
    md_rows = [line.split("|")[1:-1] for line in (out / "boost.md").read_text().splitlines() if line.startswith("| none")]
    assert len(csv_rows) == len(md_rows) == len(metrics)
    for row, md in zip(csv_rows, md_rows):
        j = rows[(row["base"], row["metric"])]
        assert row["without"] == format_value(row["metric"], j["without"]) == _numbers(md)[2]
        assert row["with"] == format_value(row["metric"], j["with"]) == _numbers(md)[3]
        assert row["better"] == j["better"] == better_of(row["metric"], j["without"], j["with"])
        assert j["difference"] == pytest.approx(j["with"] - j["without"])
        if j["better"] == "with":
            assert md[3].strip().startswith("**")
        elif j["better"] == "without":
            assert md[2].strip().startswith("**")
    # base "none" returns the LQ crop: PSNR/SSIM without the refiner are those of LQ vs HQ
    from bfrboost.metrics.fidelity import psnr

    lq_psnr = np.mean(
        [
            psnr(np.asarray(Image.open(p).convert("RGB")), np.asarray(Image.open(hq / p.name).convert("RGB")))
            for p in sorted(lq.iterdir())
        ]
    )
    assert rows[("none", "psnr")]["without"] == pytest.approx(lq_psnr)
    assert rows[("none", "psnr")]["with"] != rows[("none", "psnr")]["without"]  # the refiner changed the faces
    page = (out / "index.html").read_text()
    for rel in (
        "faces/input/0000.png",
        "faces/none/without/0000.png",
        "faces/none/with/0000.png",
        "faces/reference/0000.png",
        "boost.png",
    ):
        assert rel in page and (out / rel).is_file()
    assert Image.open(out / "boost.png").format == "PNG"


def test_boost_cli_refuses_to_overwrite_and_checks_inputs(paired, tiny_refiner, tmp_path):
    lq, hq = paired
    out = tmp_path / "boost"
    args = [
        "eval",
        "boost",
        "--base",
        "none",
        "--refiner",
        str(tiny_refiner),
        "--data",
        str(lq),
        "--reference",
        str(hq),
        "--metrics",
        "psnr,ssim",
        "-o",
        str(out),
        "--device",
        "cpu",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["metric"] for r in data["rows"]] == ["psnr", "ssim"]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and again.stderr.startswith(f"bfrboost: {out / 'boost.md'}: already exists; pass --overwrite")
    missing = runner.invoke(
        app,
        ["eval", "boost", "--base", "none", "--refiner", str(tmp_path / "nope"), "--data", str(lq), "-o", str(tmp_path / "x")],
    )
    assert missing.exit_code == 2 and "no such refiner folder" in missing.stderr


def test_markdown_marks_the_better_value_in_bold():
    def values(v: float) -> dict[str, MetricValue]:
        return {"fid": MetricValue("fid", v, 10, 0.0), "psnr": MetricValue("psnr", 30.0 - v / 10, 10, 0.0)}

    report = BoostReport(["gfpgan"], ["fid", "psnr"], 10, 10, {"gfpgan": {"without": values(47.86), "with": values(37.97)}})
    from bfrboost.evaluation.boost import csv_table, markdown_table

    md = markdown_table(report)
    assert "| gfpgan | FID ↓ | 47.86 | **37.97** | -9.89 | with refiner |" in md
    assert "| gfpgan | PSNR ↑ | 25.21 | **26.20** | +0.99 | with refiner |" in md
    assert csv_table(report).splitlines()[1] == "gfpgan,fid,lower,47.86,37.97,-9.89,with"


class _FakeRestorer:
    """Stands in for bfrboost.Restorer: base 'sharp' returns the face, 'blurry' blurs it; the
    'refiner' sharpens a little. Only the table logic is under test here."""

    def __init__(self, base, *, refine, refiner, aligned, device, sd_model):
        assert aligned and (refiner is not None) == refine
        self.base, self.refine = base, refine

    def restore_batch(self, images):
        class Result:
            def __init__(self, image):
                self.image = image

        out = []
        for img in images:
            if self.base == "blurry":
                img = cv2.GaussianBlur(img, (0, 0), 3)
            if self.refine:
                img = cv2.addWeighted(img, 1.5, cv2.GaussianBlur(img, (0, 0), 2), -0.5, 0)
            out.append(Result(img))
        return out


def test_boost_with_several_bases_keeps_their_order_and_directions(paired, tiny_refiner, tmp_path):
    lq, hq = paired
    report = run_boost(
        ["sharp", "blurry"],
        tiny_refiner,
        hq,
        tmp_path / "b",
        reference=hq,
        metrics="psnr,ssim",
        device="cpu",
        restorer_factory=_FakeRestorer,
        html_faces=2,
    )
    assert [(r.base, r.metric) for r in report.rows] == [
        ("sharp", "psnr"),
        ("sharp", "ssim"),
        ("blurry", "psnr"),
        ("blurry", "ssim"),
    ]
    sharp_psnr = report.rows[0]
    assert sharp_psnr.without == float("inf") and sharp_psnr.better == "without"  # the base alone is the reference itself
    assert sharp_psnr.difference is None  # no finite difference to inf
    for row in report.rows:
        assert row.better == better_of(row.metric, row.without, row.with_)
    page = (tmp_path / "b" / "index.html").read_text()
    assert page.count("faces/input/") == 2 and "faces/blurry/with/0001.png" in page
    assert json.loads((tmp_path / "b" / "boost.json").read_text())["rows"][0]["without"] == "inf"
