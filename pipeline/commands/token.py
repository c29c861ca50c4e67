"""kaudit token: make reader/bridge tokens and the hashes to put in tokens files instead of the tokens."""

from __future__ import annotations

import argparse
import secrets
import sys

HELP = "print the sha256:<hex> hash of a token read from stdin (for tokens files), or a new random token"
DESCRIPTION = """\
Tokens files (the bridge's --tokens-file, the API's --readers-file / KAUDIT_API_READERS_FILE) accept a token's
hash, sha256:<64 hex>, in place of the token itself: a copy of the file then gives no one access.

  kaudit token new                    # a new random token (to stdout) and its hash (to stderr)
  printf %s "$TOKEN" | kaudit token hash
  kaudit token hash < token.txt       # the first line, without its line ending
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    sub.add_parser("hash", help="read a token from stdin, print sha256:<hex>")
    sub.add_parser("new", help="print a new random token; its hash goes to stderr")


def run(args: argparse.Namespace) -> int:
    from pipeline.access.tokens import hash_token

    if args.token_command == "new":
        token = secrets.token_urlsafe(32)
        print(token)
        print(hash_token(token), file=sys.stderr)
        return 0
    line = sys.stdin.readline().rstrip("\r\n")
    if not line.strip():
        print("kaudit token hash: no token on stdin (printf %s \"$TOKEN\" | kaudit token hash)", file=sys.stderr)
        return 2
    print(hash_token(line))
    return 0
