"""The WSGI application gunicorn serves (``service.wsgi:app``).

Imported in each worker after the fork (``serve`` runs one), so each worker starts its own
keep-alive thread; only the one holding the leader lock works (see :mod:`service.keepalive`):
the lock also keeps a second ``serve`` on the same state directory from working alongside.
"""

import logging
import sys

from service.app import create_app
from service.keepalive import KeepAlive
from service.settings import ServiceSettings

# Our log beside gunicorn's, in its format, from INFO up: what the keep-alive does and why a
# step failed (a store refusing the token, say) is what an operator reads the log for. Nothing
# logged holds a secret (tests/test_canary_sweep.py).
logging.basicConfig(
    level=logging.INFO,
    stream=sys.stderr,
    datefmt="%Y-%m-%d %H:%M:%S %z",
    format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
)

settings = ServiceSettings.from_env()
app = create_app(settings)
KeepAlive(settings, app.extensions["chatgpt_login"].store).start()
