"""The ``laurentnet`` command line, on top of the Python API (:mod:`laurentnet.bridge`).

Commands: ``demo``, ``collapse``, ``verify``, ``inspect``.  Every command has ``--help``;
``--json`` prints one machine-readable object.  Exit status:

* 0 ok;
* 1 a check failed (verification, or the demo's exact collapse / proof);
* 2 bad input: a usage error, one of the package's own refusals (a
  :class:`~laurentnet.algebra.errors.LaurentnetError`: bad value, over the memory budget,
  unsafe file, ...) or an OS error on a file the user named (missing, unreadable, a
  directory, ...) — one line naming the problem; ``--debug`` shows the traceback;
* 3 anything else: an internal error, i.e. a bug in laurentnet, reported as such (one line
  asking for a bug report), never as the user's mistake;
* 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser", "parse_input_shape"]


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit status 2.  (Not a
    ``LaurentnetError`` only so that ``--help`` and usage errors need no sympy import.)"""


_NUMBER_LIKE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _version() -> str:
    """The installed distribution's version (one source of truth: ``setup.cfg``)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("laurentnet")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``laurentnet demo: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._attach_negative_values(argv), namespace)

    def _attach_negative_values(self, argv: list[str]) -> list[str]:
        """``--tolerance -inf`` -> ``--tolerance=-inf``: after an option that takes a value,
        a token like a negative number (``-1``, ``-1e-5``, ``-inf``, ``-nan``, ``-1,8,8``) is
        that value; argparse alone would read it as an unknown flag.  The command then
        refuses it, if it must, with a message naming the option."""
        takes_value = {flag for action in self._actions if action.option_strings
                       and action.nargs != 0 for flag in action.option_strings}
        out: list[str] = []
        i = 0
        while i < len(argv):
            token = argv[i]
            if token == "--":
                out.extend(argv[i:])
                break
            if token in takes_value and i + 1 < len(argv) and _NUMBER_LIKE.match(argv[i + 1]):
                out.append(f"{token}={argv[i + 1]}")
                i += 2
                continue
            out.append(token)
            i += 1
        return out


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,28,28"`` -> ``(1, 28, 28)``: the input shape without the batch axis."""
    if text is None:
        return None
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a list of integers like 1,28,28 "
                         "(channels first, no batch axis)") from None
    if any(n <= 0 for n in shape):
        raise UsageError(f"--input-shape {text!r}: every size must be positive")
    if not 1 <= len(shape) <= 4:
        raise UsageError(f"--input-shape {text!r} has {len(shape)} axes; give C or C,L / "
                         "C,H,W / C,D,H,W (no batch axis)")
    return shape


def _load(source: str, args: argparse.Namespace) -> Any:
    from .safe_load import load
    options = None
    if getattr(args, "arch_options", None):
        try:
            options = json.loads(args.arch_options)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--arch-options {args.arch_options!r} is not JSON ({exc}); give "
                             "an object such as '{\"linear\": true}'") from None
        if not isinstance(options, dict):
            raise UsageError(f"--arch-options must be a JSON object such as "
                             f"'{{\"linear\": true}}', got {args.arch_options!r}")
    return load(source, arch=getattr(args, "arch", None), arch_options=options)


def _input_shape(args: argparse.Namespace, loaded: Any) -> tuple[int, ...]:
    shape = parse_input_shape(args.input_shape)
    if shape is None:
        shape = loaded.input_shape
    if shape is None:
        raise UsageError(f"{loaded.source}: the file has no example input; give --input-shape "
                         "C,H,W (no batch axis)")
    return tuple(shape)


def _example(shape: tuple[int, ...], loaded: Any):
    """A seeded example batch; of the program's own batch size when it was exported with a
    fixed one."""
    from .verify import random_inputs
    return random_inputs(shape, _fixed_batch(loaded) or 2, seed=0)


def _check_runs(loaded: Any, shape: tuple[int, ...]) -> None:
    """The model must run on ``(batch, *shape)``: else a one-line error naming the shape."""
    import torch
    try:
        with torch.no_grad():
            loaded.module(_example(shape, loaded))
    except Exception as exc:  # the user's model refusing the user's input shape
        detail = " ".join(str(exc).split())[:200]
        raise UsageError(f"{loaded.source} does not run on an input of shape (batch, "
                         f"{', '.join(map(str, shape))}): {type(exc).__name__}: {detail} "
                         "(check --input-shape)") from None


def _fixed_batch(loaded: Any) -> int | None:
    """The batch size a ``.pt2`` was exported with, when its batch axis is not free."""
    program = getattr(loaded, "program", None)
    if program is None or not loaded.example_inputs:
        return None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name not in program.graph_signature.inputs_to_parameters \
                and node.name not in program.graph_signature.inputs_to_buffers \
                and node.name not in program.graph_signature.inputs_to_lifted_tensor_constants:
            value = node.meta.get("val")
            if value is not None and value.ndim and isinstance(value.shape[0], int):
                return int(value.shape[0])
            return None
    return None


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, default=str) if args.json else text)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    for flag, value in (("--channels", args.channels), ("--epochs", args.epochs),
                        ("--repeats", args.repeats)):
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if not math.isfinite(args.tolerance) or args.tolerance <= 0:
        raise UsageError(f"--tolerance must be a positive finite number (a relative error "
                         f"such as 1e-10), got {args.tolerance}")
    if args.out_dir is not None and not Path(args.out_dir).is_dir():
        raise UsageError(f"--out-dir {args.out_dir}: no such folder")
    report = run_demo(seed=args.seed, channels=args.channels, repeats=args.repeats,
                      tolerance=args.tolerance, epochs=args.epochs, out_dir=args.out_dir,
                      progress=not args.json, prove=args.prove)
    _emit(args, report.as_dict(), report.table())
    return 0 if report.ok else 1


def _cmd_collapse(args: argparse.Namespace) -> int:
    from .convert import convert
    from .files import check_output_path
    from .verify import verify
    out = check_output_path(args.output, inputs=[args.model])
    loaded = _load(args.model, args)
    shape = _input_shape(args, loaded)
    _check_runs(loaded, shape)
    conversion = convert(loaded.module, _example(shape, loaded), mode=args.mode,
                         allow_inexact=args.allow_inexact, merge_slower=args.merge_slower,
                         progress=not args.json)
    check = None
    if not args.no_verify:
        batch = _fixed_batch(loaded)
        check = verify(loaded.module, conversion.module, input_shape=shape,
                       original_batch=batch, converted_batch=batch, **_region(conversion))
        if not check.ok:
            _emit(args, {"report": conversion.report.as_dict(), "verification": check.as_dict(),
                         "written": None},
                  f"{conversion.report.table()}\n\n{check.table()}\n\nnot written: verification failed")
            return 1
    conversion.save(out)
    payload = {"report": conversion.report.as_dict(),
               "verification": None if check is None else check.as_dict(), "written": str(out)}
    text = conversion.report.table() + ("" if check is None else f"\n\n{check.table()}") + \
        f"\n\nwritten {out}"
    _emit(args, payload, text)
    return 0


def _region(conversion: Any) -> dict[str, Any]:
    """The exact region a conversion holds on, when it is not everywhere."""
    region = getattr(conversion, "region", None)
    return {} if region is None else {"region": region,
                                      "region_text": getattr(conversion, "region_text", None)}


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify
    if args.samples < 1:
        raise UsageError(f"--samples must be positive, got {args.samples}")
    original = _load(args.original, args)
    converted = _load(args.converted, args)
    shape = parse_input_shape(args.input_shape) or original.input_shape or converted.input_shape
    if shape is None:
        raise UsageError("neither file has an example input; give --input-shape C,H,W")
    data = _load_data(args.data) if args.data else None
    check = verify(original.module, converted.module, input_shape=shape, data=data,
                   samples=args.samples, seed=args.seed, original_batch=_fixed_batch(original),
                   converted_batch=_fixed_batch(converted))
    _emit(args, check.as_dict(), check.table())
    return 0 if check.ok else 1


def _load_data(path: str):
    """User inputs for ``verify --data``: a ``.npy`` array (no pickles) or a ``.pt`` tensor
    (``weights_only=True``), shape ``(N, *input_shape)``."""
    import numpy as np
    import torch
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--data {path}: no such file")
    try:
        if file.suffix == ".npy":
            return torch.from_numpy(np.load(file, allow_pickle=False)).to(torch.float64)
        if file.suffix in (".pt", ".pth"):
            value = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(value, torch.Tensor):
                return value.to(torch.float64)
            raise UsageError(f"--data {path}: expected one tensor, got {type(value).__name__}")
    except (ValueError, OSError, RuntimeError) as exc:
        raise UsageError(f"--data {path}: cannot read it ({exc})") from None
    raise UsageError(f"--data {path}: use a .npy array or a .pt tensor")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .convert import convert
    loaded = _load(args.model, args)
    shape = _input_shape(args, loaded)
    _check_runs(loaded, shape)
    conversion = convert(loaded.module, _example(shape, loaded), mode="partial",
                         progress=not args.json)
    _emit(args, conversion.report.as_dict(), conversion.report.table())
    return 0


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", metavar="C,H,W",
                        help="input shape without the batch axis (default: the .pt2's example)")
    parser.add_argument("--arch", help="architecture of a state dict (.pt/.pth/.safetensors), "
                                       "e.g. resnet18, resnet34, resnet_tiny")
    parser.add_argument("--arch-options", metavar="JSON",
                        help='options for --arch as JSON, e.g. \'{"linear": true}\'')
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_memory_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-budget", metavar="SIZE", default=None,
                        help="refuse work whose estimated memory is over SIZE (bytes, or like "
                             "200M, 8G; default $LAURENTNET_MEMORY_BUDGET or half the RAM)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="laurentnet",
        description="Convolutional networks as matrices of Laurent polynomials: "
                    "collapse, prove, evaluate fast.",
        epilog="Exit status: 0 ok; 1 a check failed (verification, the demo's exact collapse "
               "or proof); 2 bad input: a usage error, one of laurentnet's own refusals (bad "
               "value, over the memory budget, unsafe or broken file) or a missing/unreadable "
               "file you named (one line naming the problem); 3 an internal error, i.e. a bug "
               "in laurentnet (one line asking you to report it; add --debug before the "
               "command for the traceback); 130 interrupted.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"laurentnet {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train a linear residual CNN on the digits, convert, verify, time",
        description="Train (seeded, a few seconds) a small linear residual CNN on "
                    "scikit-learn's digits, save it as a .pt2 program, convert it with the "
                    "same code path as 'collapse', verify it, and collapse its convolutions "
                    "exactly over QQ with a proof. Exit 0 only if every check passes.")
    demo.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    demo.add_argument("--channels", type=int, default=8, help="channels per layer (default 8)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    demo.add_argument("--repeats", type=int, default=7, help="timing repeats (default 7)")
    demo.add_argument("--tolerance", type=float, default=1e-10,
                      help="max relative float64 error of the exact collapse (default 1e-10)")
    demo.add_argument("--out-dir", help="keep the .pt2 files here (default: a temp folder)")
    demo.add_argument("--prove", choices=("auto", "always", "never"), default="auto",
                      help="the exact proof over QQ: auto = up to 16 channels (it grows ~C^2), "
                           "always, or never (default auto)")
    _add_memory_budget(demo)
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(run=_cmd_demo)

    collapse = commands.add_parser(
        "collapse", help="convert a model into a faster equivalent one (.pt2), verified",
        description="Trace MODEL (.pt2, a state dict with --arch, or package.module:factory), "
                    "merge its linear parts exactly, verify the result against a float64 "
                    "reference of the original and write it as a torch.export program.")
    collapse.add_argument("model", metavar="MODEL")
    collapse.add_argument("-o", "--output", required=True, metavar="OUT.pt2")
    collapse.add_argument("--mode", choices=("auto", "affine", "kernel", "partial"),
                          default="auto", help="what to collapse into (default auto); kernel "
                          "with zero/reflect/replicate padding is border-corrected: the "
                          "kernel inside, the original layers on border strips, exact "
                          "everywhere")
    collapse.add_argument("--allow-inexact", action="store_true",
                          help="allow a kernel that is exact only on an interior region "
                               "(kernel mode: the bare kernel, no border correction)")
    collapse.add_argument("--merge-slower", action="store_true",
                          help="merge segments even where the merged form is slower")
    collapse.add_argument("--no-verify", action="store_true", help="skip the verification")
    _add_memory_budget(collapse)
    _model_arguments(collapse)
    collapse.set_defaults(run=_cmd_collapse)

    check = commands.add_parser(
        "verify", help="compare a converted model with the original",
        description="Run ORIGINAL and CONVERTED on seeded random inputs (and --data), compare "
                    "with a float64 reference of the original; exit 1 when the error exceeds "
                    "the dtype-aware tolerance.")
    check.add_argument("original", metavar="ORIGINAL")
    check.add_argument("converted", metavar="CONVERTED")
    check.add_argument("--data", help="real inputs: a .npy array or a .pt tensor (N, C, H, W)")
    check.add_argument("--samples", type=int, default=8, help="random inputs (default 8)")
    check.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    _model_arguments(check)
    _add_memory_budget(check)
    check.set_defaults(run=_cmd_verify)

    inspect = commands.add_parser(
        "inspect", help="list a model's linear segments and what they collapse to",
        description="A table of the linear segments of MODEL: ops, what each collapses to, "
                    "exactness, estimated and measured time, and the boundaries by name.")
    inspect.add_argument("model", metavar="MODEL")
    _model_arguments(inspect)
    inspect.set_defaults(run=_cmd_inspect)

    from . import cli_train
    cli_train.add_parser(commands)
    from . import cli_decompose
    cli_decompose.add_parser(commands)
    return parser


def _package_errors() -> tuple[type[BaseException], ...]:
    """The package's own refusals (exit 2): usage errors and every ``LaurentnetError``
    (bad values and types, over the memory budget, unsafe or broken files, ...)."""
    from ..algebra.errors import LaurentnetError
    return (UsageError, LaurentnetError)


def _resolved(path: Any) -> Path | None:
    try:
        return Path(os.fspath(path)).expanduser().resolve(strict=False)
    except (TypeError, ValueError, OSError, RuntimeError):
        return None


def _on_user_file(exc: BaseException, args: argparse.Namespace) -> bool:
    """An OS error (missing, unreadable, a directory, disk full, ...) on a path the user
    named on the command line, or on a file inside a folder the user named (``--out-dir``,
    the folder of ``-o``): the user's problem, exit 2.  An OS error anywhere else is ours."""
    if not isinstance(exc, OSError):
        return False
    given = {k: os.fspath(v) for k, v in vars(args).items()  # every path-like argument
             if k != "command" and v and isinstance(v, (str, os.PathLike))}
    named = [v for v in given.values() if os.path.exists(v) or Path(v).suffix or os.sep in v]
    if not named:
        return False
    paths = {p for p in map(_resolved, named) if p is not None}
    folders = set(paths)  # files inside a folder the user named (--out-dir)
    for key, value in given.items():
        if "out" in key and _resolved(value) is not None:
            folders.add(_resolved(value).parent)  # the temporary file next to an output
    for filename in (exc.filename, exc.filename2):
        if filename is None:
            continue
        where = _resolved(filename)
        if where is not None and (where in paths or where.parent in folders):
            return True
    message = str(exc)
    return exc.filename is None and any(name in message for name in named)


def _one_line(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """The ``laurentnet`` command; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        names = [name for action in parser._actions  # the registered commands, in order
                 if isinstance(action, argparse._SubParsersAction) for name in action.choices]
        print(f"laurentnet: error: give a command ({', '.join(names)}); see laurentnet --help",
              file=sys.stderr)
        return 2
    where = f"laurentnet {args.command}"
    from ..algebra.memory import memory_limit
    try:
        with memory_limit(getattr(args, "memory_budget", None), "--memory-budget"):
            return run(args)
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `laurentnet inspect m.pt2 | head`: the reader went away
        try:
            sys.stdout = open(os.devnull, "w")  # no second error when Python flushes stdout
        except OSError:
            pass
        return 141
    except Exception as exc:
        user = isinstance(exc, _package_errors()) or _on_user_file(exc, args)
        if args.debug:
            traceback.print_exc()
        if user:
            if not args.debug:
                print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        # a bug in laurentnet, not the user's mistake
        print(f"{where}: internal error in laurentnet ({type(exc).__name__}: {_one_line(exc)}); "
              "this is a bug, please report it" + (" with the traceback above" if args.debug else
                                                   " (laurentnet --debug ... shows the traceback)"),
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
