"""``sipalive import asterisk pjsip.conf`` / ``sipalive import kamailio dispatcher.list``."""

from sipalive.importers import main_import as main

__all__ = ["main"]
