"""What every command shares: the consoles, the error handler (exit codes) and the options used by
more than one command (dirs, paths, signing keys)."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from ..errors import EdgepipeError
from . import tables

if TYPE_CHECKING:
    from ..trust.signing import SigningKey

# soft_wrap: an error stays on one line, however narrow the terminal or log.
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
# Piped output (CI logs, `| less`) gets full-width tables instead of rich's 80-column default.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn library errors into one line and their exit code; hide tracebacks unless EDGEPIPE_DEBUG."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgepipeError as exc:
            if exc.details:
                err.print(tables.rows_table(exc.details, "what was tried"))
            # Escaped: a message's own brackets ([user@]host, org/name[@revision]) are text.
            err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted; nothing was published")
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException):  # click's own: usage is exit 2
            raise
        except Exception as exc:
            if os.environ.get("EDGEPIPE_DEBUG"):
                traceback.print_exc()
            err.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} "
                "(set EDGEPIPE_DEBUG=1 for the traceback and report it)"
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def path_option(name: str, help: str, multiple: bool = False) -> Callable[[F], F]:
    return click.option(name, type=click.Path(path_type=Path), multiple=multiple, help=help)


def signing_options(prefix: str) -> Callable[[F], F]:
    """``{prefix}key``, ``{prefix}certificate`` and ``{prefix}certificate-chain`` (repeatable)."""
    options = (
        path_option(
            f"{prefix}key",
            "Sign with this PEM EC private key (P-256/384/521, see `edgepipe keygen`); an "
            "encrypted one reads its passphrase from EDGEPIPE_SIGNING_KEY_PASSWORD.",
        ),
        path_option(f"{prefix}certificate", f"With {prefix}key: the key's certificate (PEM)."),
        path_option(
            f"{prefix}certificate-chain",
            f"The certificates above {prefix}certificate (PEM; repeatable).",
            multiple=True,
        ),
    )

    def decorate(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def dirs_option(kind: str) -> Callable[[F], F]:
    return click.option(
        f"--{kind}-dir",
        f"{kind}_dirs",
        multiple=True,
        type=click.Path(path_type=Path),
        help=f"Extra directory of {kind} YAML files (also EDGEPIPE_{kind.upper()}_PATH).",
    )


def signing_key(key: Path | None, certificate: Path | None, chain: tuple[Path, ...], prefix: str) -> SigningKey | None:
    """The options' SigningKey, or None without a key."""
    from ..trust.signing import SigningKey

    if key is None:
        if certificate or chain:
            raise click.UsageError(f"{prefix}certificate(-chain) needs {prefix}key")
        return None
    return SigningKey(key, certificate, chain)


# Offline by design: nothing is fetched from a model hub unless `build --download` asks, and the
# user's own HF_HUB_OFFLINE=1 (kept before the default hides it) forbids even that.
USER_HUB_OFFLINE = os.environ.get("HF_HUB_OFFLINE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
