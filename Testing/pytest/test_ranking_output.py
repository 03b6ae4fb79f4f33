"""What the leaderboard, the dashboard and `promote --dry-run` tell the user: the page, the console and the JSON say
the same; a candidate the sweep file no longer holds is marked; settings that differ get a column; the training time
is the card's; a dashboard of training cases says so; a dry run says that nothing changed."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("monai")

from ranking_helpers import TINY, make_disk_msd  # noqa: E402

from ModelSelectorLib.cli import main  # noqa: E402


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of a command line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _sweep_file(path: Path, candidates: list[dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"task": "disks", "seed": 0, "test_fraction": 0.25, "selection_fraction": 0.25,
                                    "base": {**TINY, "epochs": 1, "lr": 0.01}, "candidates": candidates}))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep run twice: {a, b}, then a file of {a unchanged, c with another seed}: a is kept, b is dropped."""
    root = tmp_path_factory.mktemp("swept")
    msd = make_disk_msd(root / "msd", n_cases=8)
    zoo = root / "zoo"
    first = _sweep_file(root / "first.yaml", [{"name": "a"}, {"name": "b", "optimizer": "adamw"}])
    second = _sweep_file(root / "second.yaml", [{"name": "a"}, {"name": "c", "seed": 1}])
    runs = []
    for config in (first, second):
        argv = ["sweep", "--dataset", str(msd), "--config", str(config), "--out", str(zoo), "--workers", "1"]
        runs.append(_run(argv))
        assert runs[-1][0] == 0, runs[-1][2]
    return {"zoo": zoo, "work": zoo / "sweeps" / "disks", "msd": msd, "first": runs[0], "second": runs[1]}


def _console_rows(out: str) -> dict[str, str]:
    """The ranking lines of a sweep's or leaderboard's console output, by candidate."""
    return {ln.split()[1]: ln for ln in out.splitlines() if ln.strip()[:1].isdigit()}


def _page_rows(page: str) -> dict[str, str]:
    """The rows of a leaderboard page, by candidate."""
    return dict(re.findall(r'<tr [^>]*data-candidate="([^"]+)">(.*?)</tr>', page, flags=re.S))


def test_a_sweep_names_the_candidates_it_did_not_train_again(swept):
    _, _, err = swept["second"]
    assert "kept: a 0.1.0 (model disks-a), same settings; not trained again" in err
    assert "kept: c" not in err and "kept: b" not in err  # c is trained; b is not in this file
    assert "kept:" not in swept["first"][2]


def test_a_candidate_the_sweep_file_no_longer_holds_is_marked_in_the_page_the_console_and_the_json(swept):
    work = swept["work"]
    assert json.loads((work / "sweep.json").read_text(encoding="utf-8"))["sweep_file_candidates"] == [
        "a",
        "c",
    ]
    console = _console_rows(swept["second"][1])
    assert set(console) == {"a", "b", "c"}
    assert console["b"].endswith("(not in the current sweep file)")
    assert "not in the current sweep file" not in console["a"] + console["c"]
    page = (work / "report" / "leaderboard.html").read_text(encoding="utf-8")
    rows = _page_rows(page)
    assert "not in the current sweep file" in rows["b"]
    assert "not in the current sweep file" not in rows["a"] + rows["c"]
    assert (
        "Ranked too, though not in the current sweep file (evaluated in an earlier run of this sweep" in page
    )
    board = json.loads((work / "report" / "leaderboard.json").read_text(encoding="utf-8"))
    marks = {r["candidate"]: r["in_current_sweep_file"] for r in board["ranking"]}
    assert marks == {"a": True, "b": False, "c": True}


def test_leaderboard_json_prints_what_leaderboard_json_holds(swept):
    rc, out, _ = _run(
        ["leaderboard", "--zoo", str(swept["zoo"]), "--task", "disks", "--metric", "hd95", "--json"]
    )
    assert rc == 0
    printed = json.loads(out)
    assert printed == json.loads((swept["work"] / "report" / "leaderboard.json").read_text(encoding="utf-8"))
    assert printed["task"] == "disks" and printed["metric"] == "hd95"
    first = printed["ranking"][0]
    assert {"rank", "candidate", "model", "version", "settings", "summary", "in_current_sweep_file"} <= set(
        first
    )
    assert {r["version"] for r in printed["ranking"]} == {"0.1.0"}
    hd = [r["summary"]["hd95"]["mean"] for r in printed["ranking"]]
    assert hd == sorted(hd)
    # the console ranks in the same order, with each version
    rc, out, _ = _run(["leaderboard", "--zoo", str(swept["zoo"]), "--task", "disks", "--metric", "hd95"])
    lines = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert [ln[1] for ln in lines] == [r["candidate"] for r in printed["ranking"]]
    assert all(ln[5] == "0.1.0" for ln in lines)


def test_every_setting_that_differs_between_candidates_has_a_column(swept):
    work = swept["work"]
    board = json.loads((work / "report" / "leaderboard.json").read_text(encoding="utf-8"))
    columns = board["setting_columns"]
    assert {"seed", "optimizer"} <= set(columns)  # c: seed 1; b: adamw
    assert "num_threads" not in columns  # how a run was carried out, not what it trained
    shown = {
        r["candidate"]: tuple(json.dumps(r["settings"].get(c)) for c in columns) for r in board["ranking"]
    }
    assert len(set(shown.values())) == 3, shown  # no two candidates look alike
    page = (work / "report" / "leaderboard.html").read_text(encoding="utf-8")
    assert '<th class="text">seed</th>' in page and '<th class="text">optimizer</th>' in page
    cells = {n: re.findall(r'<td class="text">([^<]*)</td>', row) for n, row in _page_rows(page).items()}
    seed = columns.index("seed")
    assert (cells["a"][seed], cells["c"][seed]) == ("0", "1") and cells["a"] != cells["c"]


def test_the_training_time_is_the_cards_not_the_workers_wall_time(swept):
    from ModelSelectorLib.zoo import Zoo

    work, zoo = swept["work"], Zoo(swept["zoo"])
    board = json.loads((work / "report" / "leaderboard.json").read_text(encoding="utf-8"))
    state = json.loads((work / "sweep.json").read_text(encoding="utf-8"))["candidates"]
    page = (work / "report" / "leaderboard.html").read_text(encoding="utf-8")
    assert ">training s</th>" in page and ">train s</th>" not in page
    console = swept["second"][1]
    assert "training s" in next(ln for ln in console.splitlines() if ln.startswith("rank"))
    for r in board["ranking"]:
        card_s = zoo.card(r["model"]).training_time_s
        assert r["training_time_s"] == card_s and card_s is not None
        assert r["wall_time_s"] == state[r["candidate"]]["train_seconds"]
        assert r["wall_time_s"] > card_s  # the worker's start-up and loading are not training
        assert f'data-value="{card_s}">{card_s:.1f}</td>' in _page_rows(page)[r["candidate"]]
        assert _console_rows(console)[r["candidate"]].split()[6] == f"{card_s:.1f}"


def test_a_wall_time_is_labelled_as_such(tmp_path):
    from ModelSelectorLib.ranking.leaderboard import candidate_row, time_column, write_leaderboard

    cases = [{"id": "c0", "dice": 0.9}, {"id": "c1", "dice": 0.8}]
    a = candidate_row({"candidate": "a", "cases": cases}, {"training_time_s": 2.01, "wall_time_s": 19.8})
    b = candidate_row({"candidate": "b", "cases": cases}, {"wall_time_s": 23.5})
    assert time_column([a, b]) == ("training s", ["2.0", "23.5 wall"])
    assert time_column([b]) == ("wall s", ["23.5"])
    page = write_leaderboard([a, b], tmp_path / "lb.html").read_text(encoding="utf-8")
    assert ">training s</th>" in page and ">23.5 wall</td>" in page and ">2.0</td>" in page
    page = write_leaderboard([b], tmp_path / "lb2.html").read_text(encoding="utf-8")
    assert ">wall s</th>" in page and ">23.5</td>" in page


def test_a_dashboard_of_training_cases_says_so_and_marks_them(swept, tmp_path):
    work = swept["work"]
    bundle = swept["zoo"] / "models" / "disks-a" / "0.1.0"
    split = json.loads((work / "test_split.json").read_text(encoding="utf-8"))
    trained = json.loads((work / "train" / "dataset.json").read_text(encoding="utf-8"))["training"][:2]
    root = (work / split["dataset"]).resolve()
    extra = [
        {"id": Path(c["label"]).name.split(".")[0], "image": c["image"], "label": c["label"]} for c in trained
    ]
    mixed = {**split, "dataset": str(root), "cases": split["cases"] + extra}
    (tmp_path / "mixed.json").write_text(json.dumps(mixed), encoding="utf-8")
    rc, _, err = _run(["dashboard", "--bundle", str(bundle), "--split", str(tmp_path / "mixed.json"),
                       "--out", str(tmp_path / "dash")])  # fmt: skip
    assert rc == 0, err
    seen = sorted(c["id"] for c in extra)
    warning = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "2 of the 4 cases" in warning[0] and seen[0] in warning[0]
    page = (tmp_path / "dash" / "index.html").read_text(encoding="utf-8")
    assert "2 of these 4 cases were training or validation cases of this model" in page
    assert "held-out cases" not in page
    marked = re.findall(r'<tr data-case="([^"]+)" class="seen-case">', page)
    assert sorted(marked) == seen and page.count("training or validation case</span>") == 2
    assert (
        json.loads((tmp_path / "dash" / "evaluation.json").read_text(encoding="utf-8"))["seen_cases"] == seen
    )
    # held-out cases alone: no warning, and the page says held-out
    rc, _, err = _run(["dashboard", "--bundle", str(bundle), "--split", str(work / "test_split.json"),
                       "--out", str(tmp_path / "held")])  # fmt: skip
    page = (tmp_path / "held" / "index.html").read_text(encoding="utf-8")
    assert rc == 0 and "warning" not in err and "evaluated on 2 held-out cases" in page
    assert "seen-case" not in page


def test_a_dashboard_replaces_only_an_earlier_dashboard(swept, tmp_path):
    """`dashboard --out` replaces an earlier dashboard as a whole (no overlay of it stays), and refuses, in one line,
    a folder of the user's own files or a sweep's dashboard (which `leaderboard` rewrites), leaving it as it was."""
    from ModelSelectorLib.errors import OutputError

    work = swept["work"]
    argv = ["dashboard", "--bundle", str(swept["zoo"] / "models" / "disks-a" / "0.1.0"),
            "--split", str(work / "test_split.json"), "--out"]  # fmt: skip
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my notes</h1>")
    (site / "evaluation.json").write_text('{"mine": true}')
    sweep_dashboard = work / "report" / "dashboards" / "a"
    before = {p: p.read_bytes() for p in sweep_dashboard.rglob("*") if p.is_file()}
    for folder in (site, sweep_dashboard):
        rc, out, err = _run([*argv, str(folder)])
        assert rc == OutputError.exit_code and out == "" and len(err.strip().splitlines()) == 1, err
        assert str(folder) in err and "no earlier dashboard" in err and "choose a new or empty folder" in err
    assert (site / "index.html").read_text() == "<h1>my notes</h1>"
    assert (site / "evaluation.json").read_text() == '{"mine": true}'
    assert {p: p.read_bytes() for p in sweep_dashboard.rglob("*") if p.is_file()} == before
    # an earlier dashboard is replaced whole
    dash = tmp_path / "dash"
    assert _run([*argv, str(dash)])[0] == 0
    (dash / "overlays" / "stale.png").write_bytes(b"old")
    rc, out, err = _run([*argv, str(dash)])
    assert rc == 0, err
    assert out.strip() == str(dash / "index.html") and not (dash / "overlays" / "stale.png").exists()
    assert (dash / "evaluation.json").is_file() and len(list((dash / "overlays").glob("*.png"))) == 2


def test_a_dry_run_says_that_the_zoo_is_unchanged(swept, tmp_path, monkeypatch):
    from ModelSelectorLib.zoo import Zoo

    zoo, split = swept["zoo"], str(swept["work"] / "test_split.json")
    bundle = str(zoo / "models" / "disks-a" / "0.1.0")
    # a task the zoo does not have yet: the candidate would be its first version
    rc, out, _ = _run(["promote", "--zoo", str(tmp_path / "new"), "--task", "disks", "--candidate", bundle,
                       "--split", split, "--dry-run"])  # fmt: skip
    assert (
        rc == 0 and out.splitlines()[-1] == "dry run: disks would become version 0.1.0; the zoo is unchanged."
    )
    assert not (tmp_path / "new").exists()
    # refused: said as before, and no dry-run line
    history = Zoo(zoo).history("disks-a")
    rc, out, _ = _run(["promote", "--zoo", str(zoo), "--task", "disks-a", "--candidate",
                       str(zoo / "models" / "disks-c" / "0.1.0"), "--split", split, "--dry-run"])  # fmt: skip
    assert (
        rc == 1
        and out.splitlines()[-1] == "refused: disks-a stays at version 0.1.0."
        and "dry run" not in out
    )
    assert Zoo(zoo).history("disks-a") == history
    # accepted over a current version: the version it would become
    import ModelSelectorLib.ranking.promotion as promotion

    monkeypatch.setattr(promotion, "promote", lambda *a, **k: {
        "task": "disks-a", "accepted": True, "previous": "0.1.0", "report": "ACCEPTED: better."})  # fmt: skip
    rc, out, _ = _run(["promote", "--zoo", str(zoo), "--task", "disks-a", "--candidate", bundle, "--split", split,
                       "--dry-run"])  # fmt: skip
    assert rc == 0 and out.splitlines() == [
        "ACCEPTED: better.",
        "dry run: disks-a would become version 0.1.1; the zoo is unchanged.",
    ]
    assert Zoo(zoo).versions("disks-a") == ["0.1.0"]
