"""compsrt.cli_errors.run_cli: the one way every command-line tool ends on a user mistake or Ctrl-C."""
from __future__ import annotations

import pytest

from compsrt.cli_errors import run_cli
from compsrt.errors import CompsrtError


def _raise(e: BaseException):
    def body() -> int:
        raise e
    return body


def test_exit_code_of_the_body_passes_through(capsys):
    assert run_cli("tool", lambda: 0) == 0 and run_cli("tool", lambda: 3) == 3
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error", [CompsrtError("x.png: broken; fix it"), OSError("x.png: broken; fix it")])
def test_user_errors_are_one_line_exit_2(capsys, error):
    assert run_cli("compsrt.tool", _raise(error)) == 2
    assert capsys.readouterr().err == "compsrt.tool: error: x.png: broken; fix it\n"


def test_only_the_named_error_types_are_user_errors(capsys):
    assert run_cli("t", _raise(ValueError("bad value")), errors=(CompsrtError, ValueError)) == 2
    assert capsys.readouterr().err == "t: error: bad value\n"
    with pytest.raises(ValueError):            # a bug stays a traceback
        run_cli("t", _raise(ValueError("bug")))


def test_ctrl_c_is_one_line_exit_130_or_propagates(capsys):
    assert run_cli("t", _raise(KeyboardInterrupt()), interrupted="nothing written") == 130
    assert capsys.readouterr().err == "t: interrupted; nothing written\n"
    with pytest.raises(KeyboardInterrupt):     # a tool that names nothing to say (compsrt.size)
        run_cli("t", _raise(KeyboardInterrupt()))


@pytest.mark.parametrize("module,argv", [
    ("compsrt.cli", ["a.png", "b.png", "--scale", "5"]),
    ("compsrt.eval", ["--no-such-option"]),
    ("compsrt.calib.__main__", ["--bits", "9"]),
    ("compsrt.pack", []),
    ("compsrt.size", []),
    ("compsrt.train", ["--scale", "x"]),
    ("compsrt.analysis.__main__", ["no-such-command"]),
    ("compsrt.analysis.__main__", ["significance", "--no-such-option"]),   # a subparser
    ("compsrt.model.paddle_convert", []),
    ("compsrt.kernels.cpu_kernels", ["--no-such-option"]),
])
def test_usage_errors_are_one_line_exit_2(capsys, module, argv):
    """argparse's usage errors too: one line naming the tool and the problem, no usage block."""
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "error: " in err and "--help" in err and "usage:" not in err, err
