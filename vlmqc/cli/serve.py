"""``vlmqc serve <run folder> [--host 127.0.0.1] [--port 8000] [--device auto]``: the trial's local page
(vlmqc/serve/)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> int:
    """Load the trial once, then answer the page until interrupted; 2 (and the error on stderr)
    when the folder is not a completed trial, as ``vlmqc predict`` does."""
    from werkzeug.serving import make_server

    from vlmqc.inspector import Inspector, InspectorError
    from vlmqc.serve.app import LOOPBACK_NAMES, create_app

    try:
        inspector = Inspector.load(run_dir, device=device)
    except InspectorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not is_loopback(host):
        log.warning(
            "serving on %s: anyone who can reach this machine can use the page and the model; there is no "
            "authentication",
            host,
        )
    # the Host names a request may carry: this address, and the loopback names when it is one
    # of them; none checked when listening on every address (the warning above says so)
    everywhere = host in ("0.0.0.0", "::", "")
    hosts = None if everywhere else tuple(dict.fromkeys([host, *(LOOPBACK_NAMES if is_loopback(host) else ())]))
    server = make_server(host, port, create_app(inspector, Path(run_dir), hosts=hosts), threaded=True)
    # the port actually bound (--port 0 picks a free one), on stdout for scripts and tests
    print(f"vlmqc.serve: {run_dir} on http://{host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlmqc serve", description="A local web page that answers uploads with a trained trial."
    )
    parser.add_argument("run_dir", help="a completed trial's folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return serve(args.run_dir, args.host, args.port, args.device)
