"""The ``serve`` and ``export`` subcommands: their arguments and handlers, called from ``textrec.cli``.

Kept apart from the app and the exporter so that building the command line imports neither torch nor FastAPI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from textrec.errors import TextrecError


def add_serve_parser(sub) -> None:
    """The ``serve`` subcommand's arguments."""
    s = sub.add_parser("serve", help="HTTP API and web page over a trained run (new items added live)")
    s.add_argument("run")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="worker processes (more than 1 only with --read-only)")
    s.add_argument("--read-only", action="store_true", help="refuse POST /items and DELETE /items")
    s.add_argument("--api-key-file", help="a file holding the key that writes must send in X-API-Key")
    s.add_argument("--index", default="auto", choices=["auto", "exact", "ivf", "hnsw", "pq"],
                   help="item index: exact below 100k items, faiss IVF above (auto); pq: VQ-Rec scored from its codes")
    s.add_argument("--data", help="serve a pre-trained run (or a shipped checkpoint) zero-shot on this dataset's catalogue")
    s.add_argument("--journal", help="where added items are kept (default RUN/serve/journal.jsonl; with --data, "
                   "DATA/serve/<run name>/journal.jsonl)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from textrec.serve.app import _fastapi, create_app, read_api_key
    from textrec.serve.service import Service

    _fastapi()
    import uvicorn

    if args.workers < 1:
        raise TextrecError(f"--workers must be >= 1, not {args.workers}")
    if args.workers > 1 and not args.read_only:
        raise TextrecError("--workers above 1 needs --read-only (each worker holds its own catalogue, so writes would not be shared)")
    api_key = read_api_key(args.api_key_file)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.workers > 1:
        os.environ.update({"TEXTREC_SERVE_RUN": str(args.run), "TEXTREC_SERVE_INDEX": args.index,
                           "TEXTREC_SERVE_DEVICE": args.device, "TEXTREC_SERVE_JOURNAL": args.journal or "",
                           "TEXTREC_SERVE_DATA": args.data or ""})
        print(f"serving {args.run} on http://{args.host}:{args.port}/ with {args.workers} workers (read-only)", file=sys.stderr)
        uvicorn.run("textrec.serve.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                    log_level="warning")
        return
    service = Service(args.run, index_kind=args.index, read_only=args.read_only, journal=args.journal, device=args.device,
                      data=args.data)
    print(f"serving {args.run} ({service.run.cfg.model}, {len(service.live):,} items, index {service.stats_dict()['index']['kind']}) "
          f"on http://{args.host}:{args.port}/  (API docs at /docs; added items kept in {service.journal.path})", file=sys.stderr)
    uvicorn.run(create_app(service, api_key), host=args.host, port=args.port, log_level="warning")


def add_export_parser(sub) -> None:
    s = sub.add_parser("export", help="the sequence encoder as ONNX and the item table as .npy, for another serving stack")
    s.add_argument("run")
    s.add_argument("--format", default="onnx", choices=["onnx"])
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--data", help="export a pre-trained run (or a shipped checkpoint) with this dataset's catalogue")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    from textrec.serve.export import export_onnx
    from textrec.serve.service import load_run_for_serving

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise TextrecError("textrec export needs onnx: pip install 'textrec[serve]'") from None
    result = export_onnx(load_run_for_serving(args.run, "cpu", args.data), args.out)
    if args.json:
        print(json.dumps(result.to_dict()))
    print(f"wrote {args.out}/encoder.onnx (history -> {result.dim}-d vector) and items.npy ({result.n_items:,} items + padding)",
          file=sys.stderr)
