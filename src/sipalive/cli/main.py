"""``sipalive`` entry point: dispatches to a sub-command module, imported only when used."""

from __future__ import annotations

import sys

COMMANDS = {
    "ping": "sipalive.cli.ping",
    "check": "sipalive.cli.check",
    "respond": "sipalive.cli.respond",
    "import": "sipalive.cli.importcmd",
    "monitor": "sipalive.cli.monitor",
    "register": "sipalive.cli.register",
    "nat-lifetime": "sipalive.cli.natlifetime",
}

USAGE = """\
usage: sipalive COMMAND [options]

commands:
  monitor   qualify many peers continuously: web page, /metrics, JSON API, events
  ping      probe SIP peers with OPTIONS, like ping/fping (also --flood)
  check     one probe as a Nagios/Icinga plugin (exit 0/1/2/3)
  respond   answer OPTIONS, CRLF keep-alive pings and STUN binding requests
  register  register with a registrar, keep it and the NAT binding alive, answer calls
  nat-lifetime  measure how long the NAT keeps an idle UDP binding (or --local conntrack)
  import    write a monitor target file from Asterisk pjsip.conf or Kamailio dispatcher.list

'sipalive COMMAND --help' for a command's options.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from sipalive import __version__

        sys.stdout.write(f"sipalive {__version__}\n")
        return 0
    module_name = COMMANDS.get(args[0])
    if module_name is None:
        sys.stderr.write(f"sipalive: unknown command {args[0]!r}\n{USAGE}")
        return 2
    # __import__, not importlib.import_module: importing importlib costs ~0.5 ms of a check.
    module = __import__(module_name, fromlist=("main",))
    code: int = module.main(args[1:])
    sys.stdout.flush()
    return code


def run() -> None:
    """Console-script entry: exit as soon as the verdict is out (no slow interpreter teardown)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        import os

        os._exit(code)
