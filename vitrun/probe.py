"""Can this machine reach a download host? Asked once, with a short timeout, before a library
(torchvision, the Hugging Face hub) would spend a minute of retries finding out."""

from __future__ import annotations

import os
import socket
import urllib.parse

PROBE_SECONDS = 3.0


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` (or through $https_proxy)."""
    proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
    parts = urllib.parse.urlsplit(proxy or url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
