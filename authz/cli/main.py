"""The ``authz`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authz import __version__
from authz.cli.text import USAGE_ERROR, exit_codes
from authz.errors import ConfigError

if TYPE_CHECKING:
    from authz.config import Config


def run_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run ``main`` to completion on the configured event loop."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # e.g. a platform without a uvloop wheel: say so, run anyway
            print("authz: uvloop is not installed; serving on asyncio's event loop", file=sys.stderr)
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def _serve(args: argparse.Namespace) -> int:
    from authz.config import load_config
    from authz.logs import setup_logging
    from authz.runtime import Runtime
    from authz.server import serve

    try:
        config, sha = load_config(args.config)
    except ConfigError as exc:
        print(f"authz: refusing to start, the config is invalid:\n{exc}\n"
              "Set the environment variables and provide the files it names (signing keys: "
              "`authz keygen --out DIR`).", file=sys.stderr)
        return 2
    from authz.workers import plan

    if args.workers is not None and not 1 <= args.workers <= 64:
        print("authz: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    count = plan.worker_count(config, args.workers)
    if count > 1 and not config.store.redis_url:
        print(f"authz: refusing to start, the config is invalid:\n{args.config}:\n  server.workers: "
              f"{count} workers need store.redis_url (they share nothing but the store)", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.log.level, args.log_format or config.log.format)
    try:
        if args.worker is not None:
            return run_loop(_worker(args, config, sha), config.server.event_loop)
        if count > 1:
            return run_loop(_supervise(args, config, count), config.server.event_loop)
        runtime = Runtime(args.config, config=config, sha256=sha)
        return run_loop(serve(runtime, grpc_address=args.grpc_address, http_address=args.http_address),
                        config.server.event_loop)
    except OSError as exc:
        print(f"authz: cannot start: {exc}", file=sys.stderr)
        return 1


async def _worker(args: argparse.Namespace, config: Config, sha: str) -> int:
    """One of several serving processes, started by the supervisor."""
    from authz.runtime import Runtime
    from authz.server import serve
    from authz.workers import plan
    from authz.workers.peers import Peers
    from authz.workers.supervisor import orphan_watch

    name = plan.worker_instance(args.instance_base, args.worker)

    def adjust(c: Config) -> Config:  # each worker its own audit chain, on every reload too
        return c.model_copy(update={"server": c.server.model_copy(update={"instance_id": name})})

    runtime = Runtime(args.config, config=adjust(config), sha256=sha, adjust=adjust)
    run_dir = Path(args.worker_dir)
    runtime.peers = Peers(args.worker, {i: plan.socket_path(run_dir, i) for i in range(args.workers)},
                          runtime.shared.stash, runtime.shared.placeholders)
    watch = asyncio.get_running_loop().create_task(orphan_watch(os.getppid()))
    try:
        return await serve(runtime, grpc_address=args.grpc_address,
                           http_socket=str(plan.socket_path(run_dir, args.worker)))
    finally:
        watch.cancel()


async def _supervise(args: argparse.Namespace, config: Config, count: int) -> int:
    from authz.workers import plan
    from authz.workers.supervisor import Supervisor

    grpc_address = args.grpc_address or config.server.grpc_address
    http_address = args.http_address or config.server.http_address
    extra = [*(["--log-level", args.log_level] if args.log_level else []),
             *(["--log-format", args.log_format] if args.log_format else [])]
    return await Supervisor(str(args.config), addresses=plan.worker_addresses(grpc_address, http_address, count),
                            http_address=http_address, instance_base=plan.instance_base(config),
                            extra_args=extra).run()


def _check_config(args: argparse.Namespace) -> int:
    from authz.assembly import build_pipeline
    from authz.cli.config_warnings import config_warnings
    from authz.config import load_config
    from authz.store import MemoryStore

    failed = False
    for path in args.files:
        try:
            config, sha = load_config(path)
            build_pipeline(config, MemoryStore())  # compiles everything a reload would
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        for warning in config_warnings(config):
            print(f"{path}: warning: {warning}", file=sys.stderr)
        if not args.quiet:
            print(f"{path}: ok (sha256 {sha[:12]})")
    return 1 if failed else 0


def _dev_token(argv: Sequence[str]) -> int:
    from authz.cli.dev_token import dev_token_main

    return dev_token_main(list(argv))


def _explain(argv: Sequence[str]) -> int:
    from authz.cli.explain import main as explain_main

    return explain_main(argv)


def _limits(argv: Sequence[str]) -> int:
    from authz.cli.limits import main as limits_main

    return limits_main(argv)


def _audit(argv: Sequence[str]) -> int:
    from authz.cli.audit import main as audit_main

    return audit_main(argv)


def _approvals(argv: Sequence[str]) -> int:
    from authz.cli.approvals import main as approvals_main

    return approvals_main(argv)


def _keygen(argv: Sequence[str]) -> int:
    from authz.cli.keygen import main as keygen_main

    return keygen_main(argv)


def _apikeys(argv: Sequence[str]) -> int:
    from authz.cli.apikeys import main as apikeys_main

    return apikeys_main(argv)


# Subcommands with their own argument parsers: everything after the name is theirs.
DELEGATED = {"dev-token": _dev_token, "explain": _explain, "limits": _limits, "audit": _audit,
             "approvals": _approvals, "apikeys": _apikeys, "keygen": _keygen}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authz", description="The authz command line: the sidecar and its offline tools. "
                                  "`authz COMMAND --help` tells more of each.",
        **exit_codes("0  success", "1  the command failed (each command's --help says how)", USAGE_ERROR))
    parser.add_argument("--version", action="version", version=f"authz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the sidecar (ext_authz + ext_proc gRPC, HTTP metrics)",
                       description="Run the sidecar: ext_authz + ext_proc over gRPC, metrics, health "
                                   "and published keys over HTTP, until SIGTERM.",
                       **exit_codes("0  stopped cleanly", "1  cannot start (e.g. an address in use)",
                                    "2  the config is invalid or names what is missing (each problem "
                                    "printed with its key path)"))
    p.add_argument("--config", "-c", required=True, help="policy/config YAML file")
    p.add_argument("--grpc-address", help="override server.grpc_address (HOST:PORT)")
    p.add_argument("--http-address", help="override server.http_address (HOST:PORT)")
    p.add_argument("--log-format", choices=["json", "text"], help="override log.format")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log.level")
    p.add_argument("--workers", type=int, help="override server.workers (serving processes; >1 needs Redis)")
    # Set by the supervisor for each worker it starts (authz/workers/supervisor.py).
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", help=argparse.SUPPRESS)
    p.add_argument("--instance-base", help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)

    p = sub.add_parser("check-config", help="validate config files; exit 1 if any is invalid",
                       description="Validate config files as the server would load them (every problem, "
                                   "with its key path) and warn about valid but likely unintended ones.",
                       **exit_codes("0  every file is valid (warnings may have been printed)",
                                    "1  a file is invalid", USAGE_ERROR))
    p.add_argument("files", nargs="+", help="config files to check")
    p.add_argument("--quiet", "-q", action="store_true", help="print only problems and warnings")
    p.set_defaults(func=_check_config)

    sub.add_parser("dev-token", help="mint a token from the local dev issuer (see --help)",
                   add_help=False)
    sub.add_parser("explain", help="evaluate the policy against a sample request offline (see --help)",
                   add_help=False)
    sub.add_parser("limits", help="limits show --user NAME: usage, remaining quota and budget",
                   add_help=False)
    sub.add_parser("audit", help="audit verify | explain | export | keygen (see --help)", add_help=False)
    sub.add_parser("approvals", help="approvals grant ID: grant a request held for approval", add_help=False)
    sub.add_parser("apikeys", help="apikeys add | revoke | list: API keys kept in Redis", add_help=False)
    sub.add_parser("keygen", help="write every signing key the deployment mounts; print the kubectl "
                                  "create secret command (see --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in DELEGATED:
        return DELEGATED[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
