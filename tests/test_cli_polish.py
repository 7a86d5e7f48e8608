"""CLI details a new user runs into (#14): help with examples, global flags after the subcommand,
conflicting queries rejected, config typos suggested, output format from the extension, folder
queries, partial results for unknown ids, one --format vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from aepipe.cli import build_parser, main


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_subcommand_has_a_description_and_an_example():
    for name, p in _subparsers().items():
        assert p.description, name
        assert (p.epilog or "").startswith("example") and "\n  aepipe " in p.epilog, name
        assert p.epilog in p.format_help()  # shown, line breaks kept


def test_search_options_all_have_help():
    p = _subparsers()["search"]
    assert all(a.help for a in p._actions), [a.dest for a in p._actions if not a.help]


def test_verbose_after_the_subcommand():
    assert build_parser().parse_args(["search", "--id", "x", "-v"]).verbose == 1
    assert build_parser().parse_args(["-vv", "search", "--id", "x"]).verbose == 2
    assert build_parser().parse_args(["report", "run", "-vv"]).verbose == 2


def test_two_kinds_of_query_are_rejected_not_dropped(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--id", "a", "--image", "b.png"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_stages_that_ignore_the_corpus_do_not_offer_it():
    for name in ("index", "cluster", "topics"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([name, "--corpus", "x"])
    assert build_parser().parse_args(["encode", "--corpus", "x"]).corpus == "x"


def test_one_format_vocabulary():
    for cmd in (["search", "--id", "x"], ["topics"], ["eval"]):
        assert build_parser().parse_args([*cmd, "--format", "table"]).format == "table"
        assert build_parser().parse_args([*cmd, "--format", "json"]).format == "json"


def test_misspelt_config_key_gets_a_suggestion(capsys):
    assert main(["config", "show", "--set", "model.code_sise=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'model.code_size'?" in err
    assert main(["config", "show", "--set", "zzz.q=1"]) == 2
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize("ext", ["csv", "jsonl", "json", "parquet"])
def test_output_format_follows_the_extension(trained_run, tmp_path, capsys, ext):
    out = tmp_path / f"hits.{ext}"
    assert main(["search", "--run-dir", str(trained_run.run_dir), "--id", "0003", "-k", "3", "--output", str(out)]) == 0
    if ext == "csv":
        lines = out.read_text().splitlines()
        assert lines[0].replace('"', "").startswith("query,rank,id,distance") and len(lines) == 4
    elif ext == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["query"] == "0003"
    elif ext == "json":
        assert [r["rank"] for r in json.loads(out.read_text())] == [1, 2, 3]
    else:
        assert pq.read_table(out).num_rows == 3


def test_unknown_output_extension_is_a_one_line_error(trained_run, tmp_path, capsys):
    out = tmp_path / "hits.xlsx"
    assert main(["search", "--run-dir", str(trained_run.run_dir), "--id", "0003", "--output", str(out)]) == 2
    assert "--output-format" in capsys.readouterr().err and not out.exists()
    args = ["search", "--run-dir", str(trained_run.run_dir), "--id", "0003", "-k", "2", "--output", str(out)]
    assert main([*args, "--output-format", "csv"]) == 0 and len(out.read_text().splitlines()) == 3


def test_folder_of_query_images(trained_run, tmp_path, digits_x, write_png, capsys):
    for i in (1, 2):
        write_png(tmp_path / "q" / "sub" / f"{i}.png", (digits_x[i, 0] * 255).astype(np.uint8))
    (tmp_path / "q" / "notes.txt").write_text("not an image")
    args = ["search", "--run-dir", str(trained_run.run_dir), "--image", str(tmp_path / "q"), "-k", "2"]
    assert main([*args, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted({r["query"] for r in rows}) == [str(tmp_path / "q" / "sub" / f"{i}.png") for i in (1, 2)]
    (tmp_path / "empty").mkdir()
    assert main(["search", "--run-dir", str(trained_run.run_dir), "--image", str(tmp_path / "empty")]) == 2


def test_unknown_ids_get_an_error_each_and_the_rest_an_answer(trained_run, capsys):
    code = main(
        ["search", "--run-dir", str(trained_run.run_dir), "--id", "0003", "nope", "0004", "-k", "2", "--format", "json"]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert sorted({r["query"] for r in json.loads(out)}) == ["0003", "0004"]
    assert "aepipe: error: id 'nope' is not in the store" in err
    assert main(["search", "--run-dir", str(trained_run.run_dir), "--id", "nope"]) == 2


def test_info_is_a_few_lines_and_shows_the_live_cluster_count(run_copy, capsys):
    from aepipe.cluster.kmeans import cluster_codes

    cluster_codes(run_copy.config("cluster.n_clusters=4"))  # a standalone cluster after the run
    assert main(["info", str(run_copy.run_dir), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 12 and "k=4," in out and "Flat (exact)" in out
    assert main(["info", str(run_copy.run_dir), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["clusters"]["n_clusters"] == 4
