"""The serve command's defaults, and that `tunesmith --help` does not pay for the server's imports."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli import build_parser
from tunesmith.errors import TunesmithError

REPO = Path(__file__).resolve().parents[2]


def test_serve_binds_to_localhost_by_default():
    args = build_parser().parse_args(["serve", "runs/x", "--adapter", "b=runs/b", "--adapter", "c=runs/c"])
    assert (args.host, args.port, args.engine, args.api_key) == ("127.0.0.1", 8000, "auto", None)
    assert args.adapter == ["b=runs/b", "c=runs/c"]


def test_help_imports_no_server_or_model_library():
    code = (
        "import sys\nfrom tunesmith.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'openai', 'torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--adapter NAME=RUN" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("port, message", [(99999, "--port 99999: not a port; give one from 1 to 65535"),
                                           (-1, "--port -1: not a port"), (0, "--port 0: not a port")])
def test_a_port_that_is_not_one_is_refused_before_any_model_loads(port, message):
    from tunesmith.serve.server import check_address

    with pytest.raises(TunesmithError, match=re.escape(message)):
        check_address("127.0.0.1", port)
