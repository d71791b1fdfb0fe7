"""The serve command's defaults, and that `tunesmith --help` does not pay for the server's imports."""

import subprocess
import sys
from pathlib import Path

from tunesmith.cli import build_parser

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
