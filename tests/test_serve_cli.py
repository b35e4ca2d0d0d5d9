"""``mmembed serve`` arguments (index optional, --model, --dtype, --threads) and ``mmembed search
--server URL`` against a running service."""

from __future__ import annotations

import pytest
from test_serve_api import build_index
from test_serve_server import running_server
from toy import ToyEncoder

from mmembed.cli.main import build_parser, main
from mmembed.errors import ConfigError, MMEmbedError
from mmembed.retrieval import Retriever
from mmembed.serve.app import create_app
from mmembed.serve.backend import EmbeddingModel


def parse(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_serve_needs_a_model_or_an_index_and_sane_numbers(tmp_path):
    from mmembed.cli.serve import check_args

    with pytest.raises(ConfigError, match="--model NAME_OR_DIR"):
        check_args(parse())
    with pytest.raises(ConfigError, match="--threads must be at least 1"):
        check_args(parse("--model", "cpu-default", "--threads", "0"))
    with pytest.raises(ConfigError, match="not a retrieval directory; to serve a model without an index: "
                                          "--model cpu-default-stage3"):
        check_args(parse("cpu-default-stage3"))  # was an exit 2 without a hint
    with pytest.raises(MMEmbedError, match="no retrieval.json"):
        check_args(parse(str(tmp_path)))  # a directory, but no retrieval.json
    check_args(parse("--model", "cpu-default", "--threads", "2"))  # no index is fine with a model
    with pytest.raises(SystemExit):
        parse("--model", "cpu-default", "--dtype", "float16")


def test_serve_cli_constants_are_the_library_s():
    from mmembed.cli import serve
    from mmembed.encoders import precision

    assert serve.DTYPES == precision.DTYPES and serve.PARITY_BOUND == precision.PARITY_BOUND


def test_model_only_loading_with_instructions(toy_dir, monkeypatch):
    from mmembed.cli.serve import load_served

    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **settings: ToyEncoder())
    served = load_served(parse("--model", "toy", "--instructions", str(toy_dir / "instructions" /
                                                                      "query_instructions.tsv")))
    from mmembed.api import mbeir_task_name
    from mmembed.retrieval import task_name

    assert isinstance(served, EmbeddingModel) and served.encoder.encoder_id == "toy-encoder-v1"
    entry = served.tasks()[-1]
    assert served.task_instruction(task_name(entry)) == served.task_instruction(mbeir_task_name(entry)) \
        == entry.prompts[0]
    with pytest.raises(ConfigError, match="unknown task"):
        served.task_instruction("nope")


def test_search_asks_a_running_service(toy_dir, tmp_path, capsys):
    index = build_index(toy_dir, tmp_path / "index")
    app = create_app(Retriever.load(index, encoder=ToyEncoder()), encoder_spec="toy")
    with running_server(app) as url:
        assert main(["search", "--server", url, "--text", "red square", "-k", "3"]) == 0
        remote = capsys.readouterr().out.splitlines()
        assert main(["search", "--server", url, "--list-tasks"]) == 0
        assert "toy:" in capsys.readouterr().out
        assert main(["search", "--server", url, "--text", "red", "-k", "0"]) == 2
        assert "between 1 and 100" in capsys.readouterr().err
    assert len(remote) == 3 and remote[0].split()[0] == "1"
    with running_server(create_app(EmbeddingModel(ToyEncoder()), encoder_spec="toy")) as url:
        assert main(["search", "--server", url, "--text", "red"]) == 2
        assert "needs an index" in capsys.readouterr().err
    assert main(["search", "--text", "red"]) == 2
    assert "one of them" in capsys.readouterr().err
